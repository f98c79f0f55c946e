"""Domains by name: `DOMAINS[name]` is the one object through which everything else reaches a domain."""

from __future__ import annotations

from sbt_core.domains.base import BACKTRACK, GOAL, Domain, Example, StrictConfig, Verdict
from sbt_core.domains.countdown.domain import COUNTDOWN
from sbt_core.domains.sudoku.domain import SUDOKU

DOMAINS: dict[str, Domain] = {"countdown": COUNTDOWN, "sudoku": SUDOKU}
DEFAULT = "countdown"  # the domain of a command or config that names none


def get(name: str) -> Domain:
    """The domain registered as `name`; a clear error naming the choices otherwise."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}")
    return DOMAINS[name]


def released() -> Domain:
    """The domain whose released SFT data `sbt import-dataset` reads (the first paper released Countdown's):
    the one with `load_released` / `import_released`."""
    return next(d for d in DOMAINS.values() if hasattr(d, "import_released"))


__all__ = ["BACKTRACK", "DEFAULT", "DOMAINS", "GOAL", "Domain", "Example", "StrictConfig", "Verdict", "get", "released"]
