"""How every report writes its figures: percentages, intervals, FLOPs (one place, so the reports agree)."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A proportion as a percentage with one decimal; `-` when unknown."""
    return "-" if x is None else f"{100 * x:.1f}"


def pct_interval(x: float | None, interval: tuple[float, float] | None) -> str:
    """`41.3 [33.7, 49.3]`: a percentage with its 95% interval (the bare percentage without one)."""
    return pct(x) if interval is None else f"{pct(x)} [{pct(interval[0])}, {pct(interval[1])}]"


def flops(x: float | None) -> str:
    """FLOPs in scientific notation; `-` when unknown."""
    return "-" if x is None else f"{x:.2e}"
