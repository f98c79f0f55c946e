"""`sbt study`'s report (arXiv 2504.07052): every model of every domain on one compute axis.

`run` reads each model's `study.json` (`sbt_core.study.run`) and writes `study.md`, `study.json` and one plot per
part: who wins at low, middle and high compute, the mistakes analysis, and the paper's figures (each domain's
`study_figures`).
"""

from __future__ import annotations

import math

from sbt_core import domains, io, metrics
from sbt_core.domains.base import ROLES
from sbt_core.reports.formatting import flops, pct, png


# Which curves are a model's verifier-free answer, and which consult the verifier (an upper bound).
SERIES = {
    "budget": [("greedy", "greedy, token budget", False), ("sampled", "sampled (T=0.7), token budget", False)],
    "samples": [("pass_at_n", "pass@n (verifier picks)", True), ("best_of_n", "best-of-n (log-prob)", False),
                ("majority_at_n", "majority@n", False)],
    "search": [("greedy", "greedy", False), ("search", "self-backtracking search (b, N)", False)],
}


def series(studies: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """Every curve of every model as a series: model, curve, label, uses_verifier, points."""
    out = []
    for model, s in studies.items():
        for curve, what, oracle in SERIES[s["kind"]]:
            if curve in s["curves"]:
                out.append({"model": model, "curve": curve, "label": f"{labels.get(model, model)} · {what}",
                            "uses_verifier": oracle, "points": s["curves"][curve]})
    return out


def levels(all_series: list[dict]) -> dict[str, float]:
    """Low, middle and high compute (FLOPs per problem): a direct model's n = 1, 8 and its largest n when
    there is one (the paper's axis: 256 tokens of a trace ~ n = 1), else the geometric thirds of the range."""
    direct = [s for s in all_series if s["curve"] == "pass_at_n"]
    if direct:
        pts = {p["n"]: p["flops_measured"] for p in direct[0]["points"]}
        ns = sorted(pts)
        mid = min(ns, key=lambda n: abs(math.log(n) - math.log(8)))
        return {"low": pts[ns[0]], "middle": pts[mid], "high": pts[ns[-1]]}
    flops = sorted(p["flops_measured"] for s in all_series for p in s["points"] if p["flops_measured"] > 0)
    if not flops:
        return {}
    lo, hi = math.log(flops[0]), math.log(flops[-1])
    return {"low": flops[0], "middle": math.exp((lo + hi) / 2), "high": flops[-1]}


def paper_direction(paper: dict, level: str) -> str:
    """The paper's two best rows at a level (low: n = 1 / the smallest budget, middle: n = 8, high: its largest),
    which is where its direction (direct best-of-n with the verifier vs search traces) reads."""
    ns = paper["ns"]
    i = {"low": 0, "middle": min(range(len(ns)), key=lambda k: abs(math.log(ns[k]) - math.log(8))),
         "high": len(ns) - 1}[level]
    (a, ra), (b, rb) = sorted(paper["rows"].items(), key=lambda kv: -kv[1][i])[:2]
    return f"{a} {ra[i]:g}%, {b} {rb[i]:g}%"


def best_within(points: list[dict], flops: float) -> dict | None:
    """The most accurate point that costs at most `flops` per problem (None: every point costs more)."""
    fits = [p for p in points if p["flops_measured"] <= flops * (1 + 1e-9)]
    return max(fits, key=lambda p: (p["accuracy"], -p["flops_measured"])) if fits else None


def winners(all_series: list[dict], at: dict[str, float]) -> dict[str, dict]:
    """Per compute level: every series' best point within it, ranked; the winner among verifier-free series
    and among all (with the direct model's pass@n, the paper's comparison), and whether the lead is clear
    of the runner-up's 95% interval."""
    out = {}
    for level, limit in at.items():
        ranked = []
        for s in all_series:
            p = best_within(s["points"], limit)
            if p is not None:
                lo, hi = metrics.wilson(p["accuracy"] * p["problems"], p["problems"])
                ranked.append({"series": s["label"], "model": s["model"], "uses_verifier": s["uses_verifier"],
                               "accuracy": p["accuracy"], "ci": [lo, hi], "flops": p["flops_measured"],
                               "at": {k: p[k] for k in ("budget", "n", "method") if k in p}})
        ranked.sort(key=lambda r: -r["accuracy"])
        entry = {"flops": limit, "ranked": ranked}
        for name, pool in (("verifier_free", [r for r in ranked if not r["uses_verifier"]]), ("with_verifier", ranked)):
            if pool:
                top = pool[0]
                rival = next((r for r in pool[1:] if r["model"] != top["model"]), None)
                entry[name] = {"winner": top["series"], "model": top["model"], "accuracy": top["accuracy"],
                               "runner_up": rival["series"] if rival else None,
                               "runner_up_accuracy": rival["accuracy"] if rival else None,
                               "clear": bool(rival is None or rival["ci"][1] < top["ci"][0])}
        out[level] = entry
    return out


def mistakes(studies: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """On problems both solve: wrong branches a backtracking model writes before its answer (greedy, whole
    decode) against the samples a direct model needs (first right one; expected in a random order)."""
    direct = {m: s["records"]["samples"] for m, s in studies.items() if s["kind"] == "samples"}
    # A self-backtracking model's wrong steps are rolled back by its search, never written into an answer.
    writers = {m: s["records"]["greedy"] for m, s in studies.items() if s["kind"] == "budget"}
    rows = []
    for dm, drec in direct.items():
        for bm, brec in writers.items():
            both = [(b, r) for b, r in zip(brec, drec) if b["solved"] and r["right"]]
            n = len(both)
            branches = [b["dead_ends"] for b, _ in both]
            rows.append({
                "backtracking": labels.get(bm, bm), "direct": labels.get(dm, dm), "both_solve": n,
                "backtracking_solves": sum(b["solved"] for b in brec), "direct_solves_any": sum(bool(r["right"]) for r in drec),
                "mean_dead_ends": sum(branches) / n if n else None,
                "dead_ends_histogram": {k: sum(min(x, 3) == k for x in branches) for k in range(4)},
                "mean_first_right_sample": sum(r["first_right"] for _, r in both) / n if n else None,
                "mean_expected_samples": sum(r["expected_samples"] for _, r in both) / n if n else None,
                "mean_tokens_backtracking": sum(b["tokens"] for b, _ in both) / n if n else None,
            })
    return rows


# Line style per curve: the verifier's pick dashed, sampled and voted curves dotted / dash-dotted.
_STYLE = {"pass_at_n": ("--", "s"), "best_of_n": ("-", "o"), "majority_at_n": ("-.", "v"), "greedy": ("-", "o"),
          "sampled": (":", "^"), "search": ("-", "D")}


def _plot(name: str, all_series: list[dict], at: dict[str, float], path: str) -> None:
    """Accuracy against FLOPs, one colour per model, one line style per curve, 95% intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(dict.fromkeys(s["model"] for s in all_series))}
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    for s in all_series:
        pts = sorted(s["points"], key=lambda p: p["flops_measured"])
        x = [p["flops_measured"] for p in pts]
        y = [100 * p["accuracy"] for p in pts]
        ci = [metrics.wilson(p["accuracy"] * p["problems"], p["problems"]) for p in pts]
        err = [[yy - 100 * lo for yy, (lo, _) in zip(y, ci)], [100 * hi - yy for yy, (_, hi) in zip(y, ci)]]
        ls, marker = _STYLE.get(s["curve"], ("-", "o"))
        ax.errorbar(x, y, yerr=err, marker=marker, ms=3.5, capsize=2, lw=1.2, elinewidth=0.6, ls=ls,
                    color=colours[s["model"]], label=s["label"])
    for level, f in at.items():
        ax.axvline(f, color="grey", lw=0.6, ls=":")
        ax.text(f, ax.get_ylim()[1], f" {level}", va="top", ha="left", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("decode FLOPs per problem (measured lengths)")
    ax.set_ylabel("% solved (strict verifier), 95% interval")
    ax.set_title(f"{name}: accuracy at equal test-time compute")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    io.write_bytes(path, png(fig))


def run(parts: dict[str, dict], out_dir: str, title: str, notes: list[str] = ()) -> dict[str, str]:
    """study.md, study.json and study-<part>.png in out_dir.

    `parts[label]`: {"domain", "generate" (its generate settings, a dict), "labels" (model -> name),
    "studies" (model -> its `run` output, read), optional "training" (model -> its SFT metrics, read)}.
    """
    summary, outputs, md = {"title": title, "parts": {}}, {}, [f"# {title}: backtracking vs direct at equal compute\n"]
    md += [f"- {n}" for n in notes] + [""]
    for label, part in parts.items():
        studies, labels = part["studies"], part["labels"]
        all_series = series(studies, labels)
        at = levels(all_series)
        won = winners(all_series, at)
        errs = mistakes(studies, labels)
        png = io.join(out_dir, f"study-{label}.png")
        _plot(label, all_series, at, png)
        outputs[f"plot_{label}"] = png
        summary["parts"][label] = {
            "domain": part["domain"], "levels": at, "winners": won, "mistakes": errs,
            "series": [{k: s[k] for k in ("model", "curve", "label", "uses_verifier", "points")} for s in all_series],
            "evaluations": {m: {k: s[k] for k in ("kind", "problems", "split", "seconds", "generated_tokens",
                                                   "tokens_per_second", "shape")}
                            for m, s in studies.items()},
            "training": {m: _training(t) for m, t in part.get("training", {}).items()},
        }
        md += _part_markdown(label, part, all_series, at, won, errs, studies, labels)
    outputs["study_json"] = io.write_json(summary, io.join(out_dir, "study.json"))
    outputs["study_md"] = io.join(out_dir, "study.md")
    io.write_bytes(outputs["study_md"], "\n".join(md).encode())
    return outputs


def _training(metrics_: dict) -> dict:
    """What an SFT run spent and reached (from its train_metrics.json)."""
    return {"steps": metrics_.get("train/steps"), "rows": metrics_.get("train/rows"),
            "tokens": metrics_.get("train/tokens"), "seconds": metrics_.get("train/seconds"),
            "final_loss": metrics_.get("train/final_loss"), "roles": metrics_.get("train/roles") or {}}


def _part_markdown(label, part, all_series, at, won, errs, studies, labels) -> list[str]:
    head = label if label == part["domain"] else f"{label} ({part['domain']})"
    md = [f"## {head}\n", f"![{label}](study-{label}.png)\n"]
    problems = max((s["problems"] for s in studies.values()), default=0)
    md.append(f"{problems} held-out problems per model; accuracy in % with its 95% Wilson interval; FLOPs per "
              "problem from the measured lengths (`flops_measured`) and by the paper's formula at the mean length.\n")
    md.append("### Who wins\n")
    paper = domains.get(part["domain"]).study_figures
    md.append("| compute | FLOPs / problem | verifier-free winner | runner-up (another model) | with the direct "
              "model's pass@n (the paper's comparison) |" + (" the paper at that level (its best two) |" if paper else ""))
    md.append("|---|---|---|---|---|" + ("---|" if paper else ""))
    for level, entry in won.items():
        vf, wv = entry.get("verifier_free"), entry.get("with_verifier")
        cell = lambda e: "-" if not e else "none: every model 0%" if e["accuracy"] == 0 else (  # noqa: E731
            f"**{e['winner']}** {pct(e['accuracy'])}%" + ("" if e["clear"] else " (within noise)"))
        rival = "-" if not vf or not vf["runner_up"] else f"{vf['runner_up']} {pct(vf['runner_up_accuracy'])}%"
        md.append(f"| {level} | {flops(entry['flops'])} | {cell(vf)} | {rival} | {cell(wv)} |"
                  + (f" {paper_direction(paper, level)} |" if paper else ""))
    md.append("\n(Each model's best point that costs at most the level's FLOPs; \"within noise\": the runner-up's "
              "95% interval reaches the winner's.)\n")
    md.append("### Every point\n")
    md.append("| model · curve | at | % solved [95%] | tokens / problem | FLOPs measured | FLOPs formula |")
    md.append("|---|---|---|---|---|---|")
    for s in all_series:
        for p in sorted(s["points"], key=lambda p: p["flops_measured"]):
            lo, hi = metrics.wilson(p["accuracy"] * p["problems"], p["problems"])
            where = (f"B={p['budget']}" if "budget" in p else f"n={p['n']}" if "n" in p
                     else f"{p['method']}")
            md.append(f"| {s['label']} | {where} | {pct(p['accuracy'])} [{pct(lo)}, {pct(hi)}] | "
                      f"{p['tokens_per_problem']:.0f} | {flops(p['flops_measured'])} | {flops(p['flops_formula'])} |")
    md.append("\n### Mistakes: wrong branches written vs samples needed\n")
    if errs:
        md.append("| backtracking model | direct model | both solve | wrong branches before the answer (mean; "
                  "0/1/2/3+) | direct samples to the first right one (mean; expected in random order) |")
        md.append("|---|---|---|---|---|")
        for e in errs:
            h = e["dead_ends_histogram"]
            dead = "-" if e["mean_dead_ends"] is None else f"{e['mean_dead_ends']:.2f} ({h[0]}/{h[1]}/{h[2]}/{h[3]})"
            need = "-" if e["mean_first_right_sample"] is None else (
                f"{e['mean_first_right_sample']:.2f}; {e['mean_expected_samples']:.2f}")
            md.append(f"| {e['backtracking']} | {e['direct']} | {e['both_solve']} | {dead} | {need} |")
    else:
        md.append("(needs a direct model and a backtracking model in this part)")
    md.append("\n### Throughput\n")
    md.append("| model | shape (layers, hidden, kv, ffn) | kind | decode seconds | generated tokens | tokens/s |")
    md.append("|---|---|---|---|---|---|")
    for m, s in studies.items():
        shape = ", ".join(str(s["shape"][k]) for k in ("n_layer", "hidden", "kv", "ffn"))
        md.append(f"| {labels.get(m, m)} | {shape} | {s['kind']} | {s['seconds']:.1f} | {s['generated_tokens']} | "
                  f"{(s['tokens_per_second'] or 0):.0f} |")
    if part.get("training"):
        md.append("\n### Training\n")
        md.append("What each model learnt of its first SFT rows, by token role (`sbt probe`): the share of next "
                  "tokens it guesses right given the true prefix. `result` is arithmetic or a placed digit, `choice` "
                  "the step taken, `verdict` a goal or dead-end claim, `copy` a restated state.\n")
        md.append("| model | SFT steps | rows in the data | tokens trained on | seconds | final loss | "
                  + " | ".join(ROLES) + " |")
        md.append("|---|---|---|---|---|---|" + "---|" * len(ROLES))
        for m, t in part["training"].items():
            t = _training(t)
            loss = "-" if t["final_loss"] is None else f"{t['final_loss']:.3f}"
            roles = [t["roles"].get(r) or {} for r in ROLES]
            md.append(f"| {labels.get(m, m)} | {t['steps']} | {t['rows']} | {t['tokens']} | "
                      f"{(t['seconds'] or 0):.0f} | {loss} | "
                      + " | ".join(f"{100 * r['accuracy']:.1f}%" if r.get("tokens") else "-" for r in roles) + " |")
    if paper:
        same = paper["matches"](part["generate"])
        md.append(f"\n### The paper's figures (arXiv 2504.07052, {paper['setting']})\n")
        md.append("The same problems as this part: compare levels where the model sizes match (ours: Throughput)."
                  if same else "Problems unlike this part's (and larger models): compare the shapes only.")
        md.append("\n| model | " + " | ".join(f"B={b} / n={n}" for b, n in zip(paper["budgets"], paper["ns"])) + " |")
        md.append("|---|" + "---|" * len(paper["budgets"]))
        for name, row in paper["rows"].items():
            md.append(f"| {name} | " + " | ".join(f"{x:g}" for x in row) + " |")
    return md + [""]
