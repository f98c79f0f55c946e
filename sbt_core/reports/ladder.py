"""The compute ladder's report (`sbt ladder`): the rungs on one axis, training compute (see `sbt_core.ladder`)."""

from __future__ import annotations

import math
from typing import Any

from sbt_core import domains, io, metrics
from sbt_core.config import RunConfig
from sbt_core.ladder import LadderConfig
from sbt_core.reports.formatting import flops, pct, pct_interval, png, selection_table

# The verdict category of a computation error (Countdown's; the share of false claims that are one).
COMPUTATION = "computation_error"



def _correct(results_uri: str) -> list[bool]:
    return io.read_parquet(results_uri).column("correct_strict").to_pylist()


def rung_row(name: str, config: RunConfig, ladder: LadderConfig, train_metrics: dict, summary: dict,
             results: dict[str, str]) -> dict[str, Any]:
    """One rung's figures. `summary`: the evaluate stage's summary.json; `results`: method -> results.parquet
    of the split evaluated (the last of the run's splits)."""
    split = list(summary[ladder.search])[-1]

    def at(method):
        return summary[method][split]

    n = at(ladder.search)["problems"]
    acc = {m: at(m)["accuracy_strict"] for m in ladder.methods}
    search = at(ladder.search)
    gain, lo, hi = metrics.paired_change([float(x) for x in _correct(results[ladder.baseline])],
                                         [float(x) for x in _correct(results[ladder.search])])
    false = search["false_claim_categories"]
    n_false = sum(false.values())
    op = ladder.onpolicy.get(name)
    return {
        "rung": name,
        "lever": f"on-policy D_back from {op.source}" if op else None,
        "size": config.model_spec(ladder.model)[1].size,
        "difficulty": domains.get(config.domain).difficulty(config.generate),
        "steps": train_metrics.get("train/steps"),
        "parameters": train_metrics.get("train/parameters"),
        "train_flops": train_metrics.get("train/flops"),
        "train_seconds": train_metrics.get("train/seconds"),
        "train_tokens_per_second": train_metrics.get("train/tokens_per_second"),
        "final_loss": train_metrics.get("train/final_loss"),
        "split": split,
        "problems": n,
        "accuracy": acc,
        "interval": {m: metrics.wilson(a * n, n) for m, a in acc.items()},
        "ceiling": search["any_candidate_correct_strict"],
        "ceiling_interval": metrics.wilson(search["any_candidate_correct_strict"] * n, n),
        "selectors": search.get("selectors", {}),
        "selection_gap": search["selection_gap"],
        "gain": gain,
        "gain_interval": (lo, hi),
        "false_claim_rate": search["false_claim_rate"],
        "false_claim_interval": metrics.wilson(search["false_claim_rate"] * n, n),
        "computation_share": false.get(COMPUTATION, 0) / n_false if n_false else None,
        "rolled_back_share": search["rolled_back_share"],
    }


def trend(rows: list[dict]) -> dict[str, Any] | None:
    """Least-squares line gain = a + b·log10(FLOPs) over the rungs of the first rung's setting (size varies,
    the task does not; levers left out); the FLOPs where it reaches +10 and +40 points (None: it does not rise).
    None when those rungs are fewer than two or all at one compute (a comparison at equal FLOPs has no trend)."""
    setting = rows[0]["difficulty"] if rows else None
    pts = [(math.log10(r["train_flops"]), r["gain"]) for r in rows
           if r["difficulty"] == setting and r["train_flops"] and not r.get("lever")]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx < 1e-6:  # within 0.1% of one compute
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    reach = {f"+{t}": (10 ** ((t / 100 - intercept) / slope) if slope > 0 else None) for t in (10, 40)}
    return {"difficulty": setting, "rungs": len(pts), "intercept": intercept, "slope_per_decade": slope,
            "flops_for": reach}


def first_reaching(rows: list[dict], points: float = 0.10) -> dict | None:
    """The rung of least training compute whose gain over greedy is at least `points`."""
    hits = [r for r in rows if r["gain"] >= points - 1e-12 and r["train_flops"]]
    return min(hits, key=lambda r: r["train_flops"]) if hits else None


def _ci(x: float, ci) -> str:
    return pct_interval(x, ci)


def _signed_ci(x: float, ci) -> str:
    return f"{100 * x:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _flops(x: float | None) -> str:
    return flops(x or None)  # no FLOPs measured (0) reads as unknown


def markdown(rows: list[dict], ladder: LadderConfig, notes: list[str] = ()) -> str:
    lines = [f"# Compute ladder: {ladder.name}", "",
             "Accuracy in % on new targets (strict verifier), each with its 95% Wilson interval; the gain is "
             f"`{ladder.search}` − `{ladder.baseline}` on the same problems with its paired 95% interval. Ceiling: "
             "a right answer among the search's candidates. False claims: the search's answers that claim the "
             "target and fail the verifier; comp.: the share of those that are computation errors.", ""]
    best = f" | {ladder.best_of}" if ladder.best_of else ""
    lines += [f"| rung | size | difficulty | SFT steps | train FLOPs | train min | problems | {ladder.baseline}{best} | "
              f"{ladder.search} | ceiling | gain over {ladder.baseline} | false claims | comp. |",
              "|---|---|---|---|---|---|---|---|" + ("---|" if ladder.best_of else "") + "---|---|---|---|---|"]
    for r in rows:
        a, ci = r["accuracy"], r["interval"]
        bo = f" | {_ci(a[ladder.best_of], ci[ladder.best_of])}" if ladder.best_of else ""
        lines.append(
            f"| {r['rung']} | {r['size']} | {r['difficulty']} | {r['steps']} | {_flops(r['train_flops'])} | "
            f"{(r['train_seconds'] or 0) / 60:.1f} | {r['problems']} | {_ci(a[ladder.baseline], ci[ladder.baseline])}"
            f"{bo} | {_ci(a[ladder.search], ci[ladder.search])} | {_ci(r['ceiling'], r['ceiling_interval'])} | "
            f"{_signed_ci(r['gain'], r['gain_interval'])} | {_ci(r['false_claim_rate'], r['false_claim_interval'])}"
            f" | {pct(r['computation_share'])} |")
    levers = [r for r in rows if r.get("lever")]
    if levers:
        lines += ["", "Levers (left out of the trend): " + "; ".join(f"`{r['rung']}`: {r['lever']}" for r in levers)
                  + "."]
    if any(r["selectors"] for r in rows):
        lines += ["", f"## Selectors on `{ladder.search}`'s candidates (no verifier)", "",
                  "What each verifier-free rule would have picked among the same candidates, in % with 95% "
                  "intervals; selection gap = ceiling − the default's pick.", "",
                  *selection_table([([r["rung"]], r["selectors"], r["ceiling"], r["selection_gap"], r["problems"])
                                    for r in rows], ["rung"])]
    lines += ["", "## Where the gain reaches +10 points", ""]
    hit = first_reaching(rows)
    if hit:
        lines.append(f"Smallest training compute with gain ≥ +10 points: rung `{hit['rung']}`, "
                     f"{_flops(hit['train_flops'])} FLOPs, gain {_signed_ci(hit['gain'], hit['gain_interval'])}.")
    else:
        top = max(rows, key=lambda r: r["train_flops"] or 0)
        lines.append(f"No rung reaches +10 points, up to {_flops(top['train_flops'])} training FLOPs "
                     f"(rung `{top['rung']}`: {_signed_ci(top['gain'], top['gain_interval'])}).")
    t = trend(rows)
    if t:
        reach = ", ".join(f"{k} points at {_flops(v)} FLOPs" if v else f"{k} points: never (the trend does not rise)"
                          for k, v in t["flops_for"].items())
        lines.append(f"Trend over the {t['rungs']} rungs of difficulty {t['difficulty']}: gain = "
                     f"{100 * t['intercept']:+.1f} {100 * t['slope_per_decade']:+.1f}·log10(FLOPs) points, so {reach} "
                     "(an extrapolation of a straight line in log-compute, to be read as an order of magnitude).")
    lines += ["", "![gain and false claims against training FLOPs](ladder.png)", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def plot(rows: list[dict], ladder: LadderConfig) -> bytes:
    """Left: accuracy (greedy, best-of, search, ceiling) against training FLOPs; right: the gain over greedy
    and the false-claim rate. Error bars are 95% intervals; hollow markers: rungs of another setting or a lever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]["difficulty"] if rows else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    series = [(ladder.baseline, "greedy", "tab:gray"), (ladder.search, "self-backtracking b=1 N=32", "tab:blue")]
    if ladder.best_of:
        series.insert(1, (ladder.best_of, "best-of-32 (log-prob)", "tab:orange"))
    for same in (True, False):
        part = sorted([r for r in rows if (r["difficulty"] == base and not r.get("lever")) == same],
                      key=lambda r: r["train_flops"] or 0)
        if not part:
            continue
        xs = [r["train_flops"] for r in part]
        face = None if same else "none"
        suffix = "" if same else " (other setting or lever; see labels)"

        def bars(ax, ys, ci, label, color, marker="o"):
            err = [[y - c[0] for y, c in zip(ys, ci)], [c[1] - y for y, c in zip(ys, ci)]]
            ax.errorbar(xs, [100 * y for y in ys], yerr=[[100 * e for e in err[0]], [100 * e for e in err[1]]],
                        marker=marker, color=color, mfc=face if face else color, capsize=3,
                        linestyle="-" if same else "none", label=label + suffix)

        for method, label, color in series:
            bars(left, [r["accuracy"][method] for r in part], [r["interval"][method] for r in part], label, color)
        bars(left, [r["ceiling"] for r in part], [r["ceiling_interval"] for r in part], "ceiling (any candidate)",
             "tab:green", "^")
        bars(right, [r["gain"] for r in part], [r["gain_interval"] for r in part], "gain over greedy (points)",
             "tab:blue", "s")
        bars(right, [r["false_claim_rate"] for r in part], [r["false_claim_interval"] for r in part],
             "false-claim rate of the search (%)", "tab:red", "D")
        for r in part:
            left.annotate(r["rung"], (r["train_flops"], 100 * r["accuracy"][ladder.search]), fontsize=7,
                          textcoords="offset points", xytext=(3, 4))
    right.axhline(10, color="black", linestyle=":", linewidth=1, label="+10 points")
    right.axhline(0, color="black", linewidth=0.6)
    for ax, title in ((left, "accuracy on new targets (%)"), (right, "gain over greedy; false claims (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (6·N·D)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def run(rows: list[dict], ladder: LadderConfig, out_dir: str, notes: list[str] = ()) -> dict[str, str]:
    """ladder.md, ladder.json and ladder.png in out_dir."""
    data = {"name": ladder.name, "rungs": rows, "trend": trend(rows), "first_reaching_10": first_reaching(rows),
            "notes": list(notes)}
    made = {"ladder_json": io.write_json(data, io.join(out_dir, "ladder.json")),
            "ladder_md": io.join(out_dir, "ladder.md"), "ladder_png": io.join(out_dir, "ladder.png")}
    io.write_bytes(made["ladder_md"], markdown(rows, ladder, notes).encode())
    io.write_bytes(made["ladder_png"], plot(rows, ladder))
    return made
