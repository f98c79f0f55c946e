"""How every report writes its figures: percentages, intervals, FLOPs, the selectors' table, PNGs (one place, so
the reports agree)."""

from __future__ import annotations

from sbt_core.metrics import wilson


def pct(x: float | None) -> str:
    """A proportion as a percentage with one decimal; `-` when unknown."""
    return "-" if x is None else f"{100 * x:.1f}"


def pct_interval(x: float | None, interval: tuple[float, float] | None) -> str:
    """`41.3 [33.7, 49.3]`: a percentage with its 95% interval (the bare percentage without one)."""
    return pct(x) if interval is None else f"{pct(x)} [{pct(interval[0])}, {pct(interval[1])}]"


def flops(x: float | None) -> str:
    """FLOPs in scientific notation; `-` when unknown."""
    return "-" if x is None else f"{x:.2e}"


def ci(x: float | None, n: int | None) -> tuple[float, float] | None:
    """The 95% Wilson interval of an accuracy over n problems (None when either is unknown)."""
    return None if x is None or not n else wilson(x * n, n)


def pct_ci(x: float | None, n: int | None) -> str:
    """`41.3 [33.7, 49.3]`: a percentage with its 95% Wilson interval over n problems."""
    return pct_interval(x, ci(x, n))


def yerr(values: list[float], ns: list[int | None], scale: float = 1.0) -> list[list[float]]:
    """Matplotlib's asymmetric error bars from Wilson intervals (zero where n is unknown), times `scale` (100: in
    percentage points)."""
    lo, hi = [], []
    for x, n in zip(values, ns):
        interval = ci(x, n) or (x, x)
        lo.append(scale * (x - interval[0]))
        hi.append(scale * (interval[1] - x))
    return [lo, hi]


def selection_table(rows: list[tuple[list[str], dict[str, float], float | None, float | None, int | None]],
                    heads: list[str]) -> list[str]:
    """The selectors' table, shared by the reports: one row per pool of candidates, its first cells (`heads`
    names them), each verifier-free selector's accuracy (`selectors.LABELS`' order), the ceiling (a right
    answer among the candidates) and the selection gap, in % with 95% intervals over n problems.
    `rows`: (first cells, {selector: accuracy}, ceiling, gap, n)."""
    from sbt_core.selectors import LABELS

    names = [k for k in LABELS if any(k in picks for _, picks, *_ in rows)]
    lines = ["| " + " | ".join(heads) + " | " + " | ".join(LABELS[k] for k in names) + " | ceiling | selection gap |",
             "|" + "---|" * (len(heads) + len(names) + 2)]
    for cells, picks, ceiling, gap, n in rows:
        lines.append("| " + " | ".join(cells) + " | " + " | ".join(pct_ci(picks.get(k), n) for k in names)
                     + f" | {pct_ci(ceiling, n)} | {pct(gap)} |")
    return lines


def from_zero(ax, least: float) -> None:
    """The y axis from 0 to at least `least` (accuracies and shares cannot be negative; all-zero data gets a
    readable axis rather than 0 to 0.05)."""
    ax.set_ylim(0, max(ax.get_ylim()[1], least))


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes, closed; no version stamp, so the same data gives the same bytes."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")  # legends outside the axes
    plt.close(fig)
    return buf.getvalue()


def embed_images(markdown_text: str, images: dict[str, bytes]) -> str:
    """`![alt](name.png)` -> `![alt](data:image/png;base64,...)` for each named image: a markdown
    that shows its plots where relative paths mean nothing (a Prefect artifact)."""
    import base64

    for name, data in images.items():
        markdown_text = markdown_text.replace(f"]({name})", f"](data:image/png;base64,{base64.b64encode(data).decode()})")
    return markdown_text
