"""The run's report: a table shaped like the paper's Table 1, metrics.json, and plots.

Inputs are evaluation summaries (`evaluate.run`'s summary.json: method -> split -> figures), one per
evaluated model, and `models`, what `RunConfig.report_models()` says of each (its label, its bare methods,
its recipe, its expert-iteration round), in the report's order. A row is keyed `<model>_<method>`, or by the
method alone for the model's `bare` methods: with the default models that is the pipeline's contract,
`sft_greedy`, `sft_beam`, `best_of_n_{N}` on the optimal-path model, `bt_greedy`, `bt_beam`, `sbt_b{b}_n{N}`
on the backtracking model, `ei{r}_{method}` on expert-iteration round r's. Every accuracy is a fraction in
[0, 1] from the **strict** verifier; the paper-mode figure sits beside it. The domain's evaluation splits
give the seen (first, where it has two) and held-out (last) columns.
"""

from __future__ import annotations

import fnmatch

from sbt_core import domains, io
from sbt_core.config import SearchConfig
from sbt_core.reports.formatting import ci, pct, pct_ci, from_zero, png, selection_table, yerr
from sbt_core.search.registry import METHODS


VERIFIER_MODE = "strict"


class Models:
    """What the report knows of the evaluated models (`RunConfig.report_models()`), in the report's order."""

    def __init__(self, models: dict[str, dict]):
        self.models = dict(models)

    def key(self, model: str, method: str) -> str:
        """A row's name: the method alone for the model's `bare` methods (names or patterns), else
        `<model>_<method>`."""
        bare = self.models.get(model, {}).get("bare", ())
        return method if any(fnmatch.fnmatchcase(method, p) for p in bare) else f"{model}_{method}"

    def order(self, row: dict) -> tuple:
        """The report's row order (metrics.json comes back sorted by name): model, then METHODS' order."""
        model, method = row.get("model", ""), row.get("method", "")
        rank = list(self.models).index(model) if model in self.models else len(self.models)
        return rank, list(METHODS).index(method) if method in METHODS else len(METHODS), method

    def label(self, model: str) -> str:
        return self.models.get(model, {}).get("label") or model

    def with_recipe(self, recipe: str) -> str | None:
        return next((m for m, d in self.models.items() if d.get("recipe") == recipe), None)

    def at_round(self, r: int) -> str | None:
        return next((m for m, d in self.models.items() if d.get("round") == r), None)

    def rounds(self) -> list[int]:
        return sorted(d["round"] for d in self.models.values() if d.get("round"))

    def searching(self) -> str | None:
        """The backtracking model the paper's shape is checked on: the one expert iteration starts from, else the
        first trained on the self-backtracking recipe."""
        return self.at_round(0) or self.with_recipe("self_backtrack")


def metrics(summaries: dict[str, dict], models: Models, splits: tuple[str, ...]) -> dict[str, dict]:
    """model -> summary  ==>  row key -> the contract's figures (plus paper mode and false claims). `splits`: the
    domain's evaluation splits, the held-out one last (the "new" columns), the first the "seen" ones if two."""
    held, seen_split = splits[-1], (splits[0] if len(splits) > 1 else None)
    out = {}
    for model, summary in summaries.items():
        for method, per_split in sorted(summary.items(), key=lambda kv: list(METHODS).index(kv[0])):
            seen, new = per_split.get(seen_split), per_split.get(held)
            read = [s for s in (seen, new) if s]
            out[models.key(model, method)] = {
                "model": model,
                "method": method,
                "verifier_mode": VERIFIER_MODE,
                "accuracy_seen": seen["accuracy_strict"] if seen else None,
                "accuracy_new": new["accuracy_strict"] if new else None,
                "accuracy_seen_paper": seen["accuracy_paper"] if seen else None,
                "accuracy_new_paper": new["accuracy_paper"] if new else None,
                "tokens_per_problem": sum(s["tokens_per_problem"] for s in read) / max(len(read), 1),
                "false_claim_rate_new": new["false_claim_rate"] if new else None,
                "false_claim_categories_new": new["false_claim_categories"] if new else None,
                "any_candidate_correct_new": new.get("any_candidate_correct_strict") if new else None,
                "rolled_back_share_new": new.get("rolled_back_share") if new else None,
                "problems_per_split": max((s["problems"] for s in read), default=0),
                "problems_new": new["problems"] if new else None,
                "held_out_split": held if new else None,
                "problems_seen": seen["problems"] if seen else None,
                # What each verifier-free selector would pick among the same candidates (`selectors`), and the
                # ceiling minus the method's own pick.
                "selectors_new": new.get("selectors") if new else None,
                "selection_gap_new": new.get("selection_gap") if new else None,
            }
    return out


def n_of(row: dict, split: str) -> int | None:
    """The problems behind a row's `seen` or `new` figure."""
    return row.get(f"problems_{split}") or row.get("problems_per_split")


def markdown(rows: dict[str, dict], models: Models, domain: str, title: str, notes: list[str] = ()) -> str:
    """Table 1's shape: one row per method, grouped by model; the domain's seen and held-out splits (one
    held-out split where the domain has no seen/new pair, as in Sudoku)."""
    d = domains.get(domain)
    seen = any(r["accuracy_seen"] is not None for r in rows.values())
    held, short = d.split_labels[d.eval_splits[-1]]
    seen_head = f" {d.split_labels[d.eval_splits[0]][0]} |" if seen else ""
    lines = [
        f"# {title}",
        "",
        f"Accuracy in % ({VERIFIER_MODE} verifier) with its 95% Wilson interval, paper mode in parentheses; generated "
        f"tokens per problem; and the false-claim rate on {held} (final answers that say `Goal Reached!` but fail "
        f"the verifier). {noise_note(rows)}",
        "",
        f"| model | method |{seen_head} {held} | tokens/problem | false claims ({short}) | false claims by kind, count ({short}) |",
        "|---|---|---|---|---|---|" + ("---|" if seen else ""),
    ]
    for key, r in rows.items():
        seen_cell = (f" {pct_ci(r['accuracy_seen'], n_of(r, 'seen'))} ({pct(r['accuracy_seen_paper'])}) |"
                     if seen else "")
        lines.append(
            f"| {models.label(r['model'])} | `{key}` |{seen_cell} "
            f"{pct_ci(r['accuracy_new'], n_of(r, 'new'))} ({pct(r['accuracy_new_paper'])}) | "
            f"{r['tokens_per_problem']:.0f} | {pct_ci(r['false_claim_rate_new'], n_of(r, 'new'))} | "
            f"{_categories(r.get('false_claim_categories_new'))} |"
        )
    lines.append("")
    lines += [f"- {n}" for n in notes]
    lines += selection_markdown(rows, models, held)
    checks = shape_checks(rows, models)
    if checks:
        lines += ["", f"## The paper's shape ({held})", "", "| criterion | measured | holds |", "|---|---|---|"]
        lines += [f"| {c['criterion']} | {c['measured']} | {'yes' if c['holds'] else '**no**'} |" for c in checks]
    return "\n".join(lines) + "\n"


def noise_note(rows: dict[str, dict]) -> str:
    """How large a difference between two rows the sample size can tell from noise: the 95% half-width of a
    difference of two independent accuracies near 50% on the smallest held-out split."""
    ns = [n for r in rows.values() if (n := n_of(r, "new"))]
    if not ns:
        return ""
    n = min(ns)
    return (f"With {n} problems per split, differences under about {100 * 1.96 * (0.5 / n) ** 0.5:.0f} points "
            "are within the noise (95%, two rows near 50%; paired comparisons of one model are tighter).")


def selection_markdown(rows: dict[str, dict], models: Models, held: str) -> list[str]:
    """The selectors' row family: for every method with a pool of candidates, each verifier-free selector's
    accuracy on the same candidates, the ceiling (any candidate right) and the selection gap."""
    pooled = {k: r for k, r in rows.items() if r.get("selectors_new")}
    if not pooled:
        return []
    return ["", f"## Selection without a verifier ({held})", "",
            "Accuracy in % (95% interval) had each rule picked the answer among the method's own candidates; "
            "ceiling: a right answer among them (a perfect selector); gap: ceiling − the method's own pick. "
            "The released code's summed score is its rule, kept for fidelity: it ranks a path found often below "
            "one found once.", "",
            *selection_table([([models.label(r["model"]), f"`{key}`"], r["selectors_new"], r["any_candidate_correct_new"],
                               r["selection_gap_new"], n_of(r, "new")) for key, r in pooled.items()],
                             ["model", "method"])]


def _categories(counts: dict[str, int] | None) -> str:
    """`computation_error 132, rule_violation 4` -> `computation 132 · rule 4`."""
    if not counts:
        return "-"
    return " · ".join(f"{k.split('_')[0]} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def shape_checks(rows: dict[str, dict], models: Models, search: str = "sbt_b1_n32") -> list[dict]:
    """The paper's shape, checked on held-out accuracy; criteria whose rows are missing are left out.

    1. self-backtracking (b=1, N=32) at least 40 points above optimal-path SFT greedy;
    2. b=1 >= b=0 and 3. N=32 >= N=8 (test-time scaling);
    4. Best-of-N (log-prob selector, on the optimal-path model) below self-backtracking at equal N;
    5. expert-iteration round 1 greedy >= 1.4 x round-0 (backtracking model) greedy;
    6. the last round's greedy >= the round-0 search.
    """
    acc = {k: r["accuracy_new"] for k, r in rows.items() if r.get("accuracy_new") is not None}
    sft, bt = models.with_recipe("optimal"), models.searching()
    on_bt = lambda method: models.key(bt, method)  # noqa: E731
    out = []

    def check(criterion: str, keys: list[str], holds, measured) -> None:
        if all(k in acc for k in keys):
            vals = [acc[k] for k in keys]
            out.append({"criterion": criterion, "measured": measured(*vals), "holds": bool(holds(*vals))})

    pts = lambda x: f"{100 * x:.1f}"  # noqa: E731
    top, greedy = on_bt(search), models.key(sft, "greedy")
    check(f"`{top}` ≥ `{greedy}` + 40 points", [top, greedy], lambda s, g: s - g >= 0.40 - 1e-9,
          lambda s, g: f"{pts(s)} vs {pts(g)} ({100 * (s - g):+.1f})")
    check("b=1 ≥ b=0 (N=32)", [on_bt("sbt_b1_n32"), on_bt("sbt_b0_n32")], lambda a, b: a >= b,
          lambda a, b: f"{pts(a)} vs {pts(b)}")
    check("N=32 ≥ N=8 (b=1)", [on_bt("sbt_b1_n32"), on_bt("sbt_b1_n8")], lambda a, b: a >= b,
          lambda a, b: f"{pts(a)} vs {pts(b)}")
    for n in (8, 16, 32):
        for b in (1, 0):
            if on_bt(f"sbt_b{b}_n{n}") in acc:
                best = models.key(sft, f"best_of_n_{n}")
                check(f"`{best}` < `{on_bt(f'sbt_b{b}_n{n}')}`", [best, on_bt(f"sbt_b{b}_n{n}")], lambda x, y: x < y,
                      lambda x, y: f"{pts(x)} vs {pts(y)}")
                break
    rounds = [r for r in models.rounds() if models.key(models.at_round(r), "greedy") in acc]
    first, base = models.key(models.at_round(1), "greedy"), on_bt("greedy")
    check(f"`{first}` ≥ 1.4 × `{base}`", [first, base], lambda e, g: e >= 1.4 * g and e > 0,
          lambda e, g: f"{pts(e)} vs {pts(g)} (×{e / g:.2f})" if g else f"{pts(e)} vs {pts(g)}")
    if rounds:
        last = models.key(models.at_round(rounds[-1]), "greedy")
        check(f"`{last}` ≥ `{top}` (round 0)", [last, top], lambda e, s: e >= s, lambda e, s: f"{pts(e)} vs {pts(s)}")
    return out


def method(row: dict) -> SearchConfig | None:
    """The search settings of a row's method (decoder, N, b, selector), from `search.registry.METHODS`."""
    return SearchConfig(**METHODS[row["method"]]) if row.get("method") in METHODS else None


def _families(rows: dict[str, dict], models: Models) -> dict[str, list[str]]:
    """Curves of the scaling plot: Best-of-N (log-prob selector) and self-backtracking per b, per model (expert
    iteration's rounds left out)."""
    out: dict[str, list[str]] = {}
    bt = models.searching()
    for key, r in sorted(rows.items(), key=lambda kv: models.order(kv[1])):
        m = method(r)
        if m is None or models.models.get(r["model"], {}).get("round"):
            continue
        if m.decoder == "best_of_n" and m.selector == "logprob":
            out.setdefault(f"Best-of-N (log-prob), {models.label(r['model'])}", []).append(key)
        elif m.decoder == "self_backtrack":
            out.setdefault(f"self-backtracking b={m.backtrack_budget}" + (
                "" if r["model"] == bt else f", {models.label(r['model'])}"), []).append(key)
    return out


def scaling_plot(rows: dict[str, dict], models: Models) -> bytes:
    """PNG: accuracy on new (solid) and seen (dashed) targets against N, per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for i, (label, keys) in enumerate(_families(rows, models).items()):
        keys = sorted(keys, key=lambda k: method(rows[k]).n)
        xs = [method(rows[k]).n for k in keys]
        color = f"C{i}"
        for split, fmt, alpha in (("new", "o-", 1.0), ("seen", "s--", 0.6)):
            ys = [rows[k][f"accuracy_{split}"] for k in keys]
            if any(y is None for y in ys):
                continue
            err = yerr(ys, [n_of(rows[k], split) for k in keys], scale=100)
            ax.errorbar(xs, [100 * y for y in ys], yerr=err, fmt=fmt,
                        color=color, alpha=alpha, capsize=3, label=f"{label} ({split})")
    for model, style in ((models.with_recipe("optimal"), ":"), (models.searching(), "-.")):
        key = models.key(model, "greedy")
        if key in rows and rows[key]["accuracy_new"] is not None:
            ax.axhline(100 * rows[key]["accuracy_new"], ls=style, color="grey",
                       label=f"{models.label(model)}, greedy (new)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per expansion)")
    ax.set_ylabel(f"accuracy, % ({VERIFIER_MODE})")
    from_zero(ax, 10)
    ax.set_title("Test-time scaling (bars: 95% intervals)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    ax.grid(alpha=0.3)
    return png(fig)


def rounds_plot(rows: dict[str, dict], models: Models, search_method: str = "sbt_b1_n32") -> bytes:
    """PNG: greedy and search accuracy (new targets) against expert-iteration round (0 = the model it starts from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in models.rounds() if models.key(models.at_round(r), "greedy") in rows]
    start = models.searching()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    # Side by side, not on top of each other: equal accuracies would hide one line under the other.
    for (label, m), (fmt, dx) in zip((("greedy", "greedy"), (search_method, search_method)),
                                     (("o-", -0.06), ("s--", 0.06))):
        keys = [models.key(start, m)] + [models.key(models.at_round(r), m) for r in rounds]
        pts = [(r, rows[k]["accuracy_new"], n_of(rows[k], "new")) for r, k in zip([0, *rounds], keys) if k in rows]
        if pts:
            xs, ys, ns = zip(*pts)
            err = yerr(list(ys), list(ns), scale=100)
            ax.errorbar([x + dx for x in xs], [100 * y for y in ys], yerr=err,
                        fmt=fmt, capsize=3, label=f"{label} (new targets)")
    from_zero(ax, 10)
    ax.set_xlabel("expert-iteration round")
    ax.set_ylabel(f"accuracy, % ({VERIFIER_MODE})")
    ax.set_title("Expert iteration: slow search distilled into greedy (bars: 95%)")
    ax.set_xticks([0, *rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig)


def table(rows: dict[str, dict], models: Models) -> list[dict]:
    """The report's table as records (for a Prefect table artifact): its row order, accuracies in %."""
    def pct1(x):
        return None if x is None else round(100 * x, 1)

    return [
        {"model": models.label(r["model"]), "row": key,
         "seen targets %": pct1(r["accuracy_seen"]), "new targets %": pct1(r["accuracy_new"]),
         "new targets 95% interval": (lambda c: None if c is None else f"{pct1(c[0])}-{pct1(c[1])}")(
             ci(r["accuracy_new"], n_of(r, "new"))),
         "seen targets % (paper mode)": pct1(r["accuracy_seen_paper"]),
         "new targets % (paper mode)": pct1(r["accuracy_new_paper"]),
         "tokens/problem": round(r["tokens_per_problem"], 1), "false claims (new) %": pct1(r["false_claim_rate_new"]),
         "verifier": r["verifier_mode"]}
        for key, r in sorted(rows.items(), key=lambda kv: models.order(kv[1]))
    ]


def run(summaries: dict[str, str], out_dir: str, title: str, models: dict[str, dict], domain: str,
        notes: list[str] = (), search_method: str = "sbt_b1_n32",
        grpo: dict[str, dict[str, str]] | None = None, rounds: list[dict[str, str]] | None = None,
        round_methods: list[str] = ()) -> dict[str, str]:
    """Stage entry: summaries (model -> summary.json URI) -> report.md, metrics.json, two PNGs. `models`:
    `RunConfig.report_models()`; `domain`: whose evaluation splits the summaries hold.

    `grpo[model]`: {"before", "after" (pass@k study.json URIs), "metrics" (grpo_metrics.json)} per model tuned;
    its figures go in a GRPO section, `grpo.png`, and a `grpo` field on the tuned model's rows (`grpo_{model}`).
    `rounds`: expert iteration's rounds (`reports.rounds`), `round_methods` on each: a round-by-round section
    and `rounds.json`.
    """
    from sbt_core.reports.grpo import grpo_markdown, grpo_plot, grpo_summary

    known = Models(models)
    rows = metrics({model: io.read_json(uri) for model, uri in summaries.items()}, known,
                   domains.get(domain).eval_splits)
    tuned = {model: grpo_summary(io.read_json(u["before"]), io.read_json(u["after"]), io.read_json(u["metrics"]))
             for model, u in (grpo or {}).items()}
    for model, t in tuned.items():
        for r in rows.values():
            if r["model"] == f"grpo_{model}":
                r["grpo"] = {k: v for k, v in t.items() if k != "history"}
    outputs = {
        "metrics": io.write_json(rows, io.join(out_dir, "metrics.json")),
        "report": io.join(out_dir, "report.md"),
        "plot_scaling": io.join(out_dir, "accuracy_vs_n.png"),
        "plot_rounds": io.join(out_dir, "accuracy_vs_rounds.png"),
    }
    io.write_bytes(outputs["plot_scaling"], scaling_plot(rows, known))
    io.write_bytes(outputs["plot_rounds"], rounds_plot(rows, known, search_method))
    body = (markdown(rows, known, domain, title, notes)
            + "\n![accuracy against N](accuracy_vs_n.png)\n\n![accuracy against rounds](accuracy_vs_rounds.png)\n")
    if rounds:
        from sbt_core.reports import rounds as ei

        d = domains.get(domain)
        summary = ei.summarise(rounds, list(round_methods), d.eval_splits[-1])
        outputs["rounds"] = io.write_json(summary, io.join(out_dir, "rounds.json"))
        body += "\n".join(ei.markdown(summary, list(round_methods), d.split_labels[d.eval_splits[-1]][0])) + "\n"
    if tuned:
        labels = {m: known.label(m) for m in tuned}
        outputs["grpo"] = io.write_json(tuned, io.join(out_dir, "grpo.json"))
        outputs["plot_grpo"] = io.join(out_dir, "grpo.png")
        io.write_bytes(outputs["plot_grpo"], grpo_plot(tuned, labels))
        body += "\n" + grpo_markdown(tuned, labels)
    io.write_bytes(outputs["report"], body.encode())
    return outputs
