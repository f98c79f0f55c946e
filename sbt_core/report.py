"""The run's report: a table shaped like the paper's Table 1, metrics.json, and plots.

Inputs are evaluation summaries (`evaluate.run`'s summary.json: method -> split -> figures),
one per evaluated model. Row keys follow the pipeline's contract: on the optimal-path model
`sft_greedy`, `sft_beam`, `best_of_n_{N}`; on the backtracking model `bt_greedy`, `bt_beam`,
`sbt_b{b}_n{N}`; on expert-iteration round r's model `ei{r}_{method}`. Every accuracy is a
fraction in [0, 1] from the **strict** verifier; the paper-mode figure sits beside it.
"""

from __future__ import annotations

import io as _io
import re

from sbt_core import io
from sbt_core.config import METHODS

VERIFIER_MODE = "strict"


def row_key(model: str, method: str) -> str:
    """The report's name for `method` run on `model` ("sft", "bt" or "ei{r}")."""
    if model == "sft":
        return method if method.startswith("best_of_n") else f"sft_{method}"
    if model == "bt":
        return method if method.startswith("sbt_") else f"bt_{method}"
    return f"{model}_{method}"


def metrics(summaries: dict[str, dict]) -> dict[str, dict]:
    """model -> summary  ==>  row key -> the contract's figures (plus paper mode and false claims)."""
    out = {}
    for model, summary in summaries.items():
        for method, per_split in sorted(summary.items(), key=lambda kv: list(METHODS).index(kv[0])):
            seen, new = per_split.get("val_seen"), per_split.get("val_new")
            splits = [s for s in (seen, new) if s]
            out[row_key(model, method)] = {
                "model": model,
                "method": method,
                "verifier_mode": VERIFIER_MODE,
                "accuracy_seen": seen["accuracy_strict"] if seen else None,
                "accuracy_new": new["accuracy_strict"] if new else None,
                "accuracy_seen_paper": seen["accuracy_paper"] if seen else None,
                "accuracy_new_paper": new["accuracy_paper"] if new else None,
                "tokens_per_problem": sum(s["tokens_per_problem"] for s in splits) / max(len(splits), 1),
                "false_claim_rate_new": new["false_claim_rate"] if new else None,
                "false_claim_categories_new": new["false_claim_categories"] if new else None,
                "problems_per_split": max((s["problems"] for s in splits), default=0),
            }
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


MODEL_LABELS = {"sft": "SFT on optimal paths (D_op)", "bt": "SFT on D_op ∪ D_back"}


def markdown(rows: dict[str, dict], title: str = "Countdown", notes: list[str] = ()) -> str:
    """Table 1's shape: one row per method, grouped by model; seen and new targets."""
    lines = [
        f"# {title}",
        "",
        f"Accuracy in % ({VERIFIER_MODE} verifier; paper-mode in brackets), generated tokens per problem, and the "
        "false-claim rate on new targets (final answers that say `Goal Reached!` but fail the verifier).",
        "",
        "| model | method | seen targets | new targets | tokens/problem | false claims (new) |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        label = MODEL_LABELS.get(r["model"], f"expert iteration round {r['model'][2:]}")
        lines.append(
            f"| {label} | `{key}` | {_pct(r['accuracy_seen'])} ({_pct(r['accuracy_seen_paper'])}) | "
            f"{_pct(r['accuracy_new'])} ({_pct(r['accuracy_new_paper'])}) | {r['tokens_per_problem']:.0f} | "
            f"{_pct(r['false_claim_rate_new'])} |"
        )
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _n_of(key: str) -> int | None:
    m = re.search(r"n_?(\d+)$", key)
    return int(m.group(1)) if m else None


def scaling_plot(rows: dict[str, dict]) -> bytes:
    """PNG: accuracy on new (solid) and seen (dashed) targets against N, per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {
        "Best-of-N (log-prob), D_op model": [k for k in rows if k.startswith("best_of_n_")],
        "self-backtracking b=0": [k for k in rows if k.startswith("sbt_b0_n")],
        "self-backtracking b=1": [k for k in rows if k.startswith("sbt_b1_n")],
        "self-backtracking b=2": [k for k in rows if k.startswith("sbt_b2_n")],
    }
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for i, (label, keys) in enumerate((f, k) for f, k in families.items() if k):
        keys = sorted(keys, key=_n_of)
        xs = [_n_of(k) for k in keys]
        color = f"C{i}"
        ax.plot(xs, [rows[k]["accuracy_new"] for k in keys], "o-", color=color, label=f"{label} (new)")
        ax.plot(xs, [rows[k]["accuracy_seen"] for k in keys], "s--", color=color, alpha=0.6, label=f"{label} (seen)")
    for key, style in (("sft_greedy", ":"), ("bt_greedy", "-.")):
        if key in rows and rows[key]["accuracy_new"] is not None:
            ax.axhline(rows[key]["accuracy_new"], ls=style, color="grey", label=f"{key} (new)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per expansion)")
    ax.set_ylabel(f"accuracy ({VERIFIER_MODE})")
    ax.set_title("Test-time scaling")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def rounds_plot(rows: dict[str, dict], search_method: str = "sbt_b1_n32") -> bytes:
    """PNG: greedy and search accuracy (new targets) against expert-iteration round (0 = bt model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(int(m.group(1)) for k in rows if (m := re.fullmatch(r"ei(\d+)_greedy", k)))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, key0, fmt in (("greedy", "bt_greedy", "ei{}_greedy"), (search_method, search_method, "ei{}_" + search_method)):
        keys = [key0] + [fmt.format(r) for r in rounds]
        pts = [(r, rows[k]["accuracy_new"]) for r, k in zip([0, *rounds], keys) if k in rows]
        if pts:
            ax.plot(*zip(*pts), "o-", label=f"{label} (new targets)")
    ax.set_xlabel("expert-iteration round")
    ax.set_ylabel(f"accuracy ({VERIFIER_MODE})")
    ax.set_title("Expert iteration: slow search distilled into greedy")
    ax.set_xticks([0, *rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
    return buf.getvalue()


def run(summaries: dict[str, str], out_dir: str, title: str, notes: list[str] = (),
        search_method: str = "sbt_b1_n32") -> dict[str, str]:
    """Stage entry: summaries (model -> summary.json URI) -> report.md, metrics.json, two PNGs."""
    rows = metrics({model: io.read_json(uri) for model, uri in summaries.items()})
    outputs = {
        "metrics": io.write_json(rows, io.join(out_dir, "metrics.json")),
        "report": io.join(out_dir, "report.md"),
        "plot_scaling": io.join(out_dir, "accuracy_vs_n.png"),
        "plot_rounds": io.join(out_dir, "accuracy_vs_rounds.png"),
    }
    io.write_bytes(outputs["plot_scaling"], scaling_plot(rows))
    io.write_bytes(outputs["plot_rounds"], rounds_plot(rows, search_method))
    body = markdown(rows, title, notes) + "\n![accuracy against N](accuracy_vs_n.png)\n\n![accuracy against rounds](accuracy_vs_rounds.png)\n"
    io.write_bytes(outputs["report"], body.encode())
    return outputs
