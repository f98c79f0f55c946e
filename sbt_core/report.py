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
from sbt_core.formatting import pct, pct_interval
from sbt_core.config import SearchConfig
from sbt_core.search.registry import METHODS
from sbt_core.metrics import mean_interval, paired_change, pass_at_k, wilson

VERIFIER_MODE = "strict"


def row_order(row: dict) -> tuple:
    """The report's row order (metrics.json comes back sorted by name): model, then METHODS' order."""
    model, method = row.get("model", ""), row.get("method", "")
    rank = {"sft": 0, "bt": 1}.get(model, 2 + int(model[2:]) if re.fullmatch(r"ei\d+", model) else 99)
    return rank, list(METHODS).index(method) if method in METHODS else len(METHODS), method


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
            seen, new = per_split.get("val_seen"), per_split.get("val_new", per_split.get("val"))  # Sudoku: val
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
                "any_candidate_correct_new": new.get("any_candidate_correct_strict") if new else None,
                "rolled_back_share_new": new.get("rolled_back_share") if new else None,
                "problems_per_split": max((s["problems"] for s in splits), default=0),
                "problems_new": new["problems"] if new else None,
                "held_out_split": "val_new" if "val_new" in per_split else "val" if new else None,
                "problems_seen": seen["problems"] if seen else None,
                # What each verifier-free selector would pick among the same candidates (`selectors`), and the
                # ceiling minus the method's own pick.
                "selectors_new": new.get("selectors") if new else None,
                "selection_gap_new": new.get("selection_gap") if new else None,
            }
    return out


def ci(x: float | None, n: int | None) -> tuple[float, float] | None:
    """The 95% Wilson interval of an accuracy over n problems (None when either is unknown)."""
    return None if x is None or not n else wilson(x * n, n)


def _pct_ci(x: float | None, n: int | None) -> str:
    """`41.3 [33.7, 49.3]`: a percentage with its 95% interval."""
    return pct_interval(x, ci(x, n))


def _n(row: dict, split: str) -> int | None:
    return row.get(f"problems_{split}") or row.get("problems_per_split")


def _yerr(values: list[float], ns: list[int | None]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars from Wilson intervals (zero where n is unknown)."""
    lo, hi = [], []
    for x, n in zip(values, ns):
        interval = ci(x, n) or (x, x)
        lo.append(x - interval[0])
        hi.append(interval[1] - x)
    return [lo, hi]


MODEL_LABELS = {"sft": "SFT on optimal paths (D_op)", "bt": "SFT on D_op ∪ D_back"}


def model_label(model: str, labels: dict[str, str] | None = None) -> str:
    """A model as the report's first column names it: its configured label, the first paper's two models'
    names, `expert iteration round r`, or the model's own name."""
    if labels and model in labels:
        return labels[model]
    if model in MODEL_LABELS:
        return MODEL_LABELS[model]
    return f"expert iteration round {model[2:]}" if re.fullmatch(r"ei\d+", model) else model


def markdown(rows: dict[str, dict], title: str = "Countdown", notes: list[str] = (),
             labels: dict[str, str] | None = None) -> str:
    """Table 1's shape: one row per method, grouped by model; seen and new targets (one held-out split, `val`,
    where the domain has no seen/new split, as in Sudoku)."""
    seen = any(r["accuracy_seen"] is not None for r in rows.values())
    new_targets = seen or any(r.get("held_out_split") == "val_new" for r in rows.values())
    held, short = ("new targets", "new") if new_targets else ("held-out (val)", "val")
    lines = [
        f"# {title}",
        "",
        f"Accuracy in % ({VERIFIER_MODE} verifier) with its 95% Wilson interval, paper mode in parentheses; generated "
        f"tokens per problem; and the false-claim rate on {held} (final answers that say `Goal Reached!` but fail "
        "the verifier). With a few hundred problems, differences under about 8 points are within the noise.",
        "",
        f"| model | method |{' seen targets |' if seen else ''} {held} | tokens/problem | false claims ({short}) | "
        f"of which ({short}) |",
        "|---|---|---|---|---|---|" + ("---|" if seen else ""),
    ]
    for key, r in rows.items():
        label = model_label(r["model"], labels)
        seen_cell = (f" {_pct_ci(r['accuracy_seen'], _n(r, 'seen'))} ({pct(r['accuracy_seen_paper'])}) |"
                     if seen else "")
        lines.append(
            f"| {label} | `{key}` |{seen_cell} "
            f"{_pct_ci(r['accuracy_new'], _n(r, 'new'))} ({pct(r['accuracy_new_paper'])}) | "
            f"{r['tokens_per_problem']:.0f} | {_pct_ci(r['false_claim_rate_new'], _n(r, 'new'))} | "
            f"{_categories(r.get('false_claim_categories_new'))} |"
        )
    lines.append("")
    lines += [f"- {n}" for n in notes]
    lines += selection_markdown(rows, held, labels)
    checks = shape_checks(rows)
    if checks:
        lines += ["", f"## The paper's shape ({held})", "", "| criterion | measured | holds |", "|---|---|---|"]
        lines += [f"| {c['criterion']} | {c['measured']} | {'yes' if c['holds'] else '**no**'} |" for c in checks]
    return "\n".join(lines) + "\n"


def selection_markdown(rows: dict[str, dict], held: str = "new targets", labels: dict[str, str] | None = None) -> list[str]:
    """The selectors' row family: for every method with a pool of candidates, each verifier-free selector's
    accuracy on the same candidates, the ceiling (any candidate right) and the selection gap."""
    from sbt_core.selectors import LABELS

    pooled = {k: r for k, r in rows.items() if r.get("selectors_new")}
    if not pooled:
        return []
    names = [k for k in LABELS if any(k in r["selectors_new"] for r in pooled.values())]
    lines = ["", f"## Selection without a verifier ({held})", "",
             "Accuracy in % (95% interval) had each rule picked the answer among the method's own candidates; "
             "ceiling: a right answer among them (a perfect selector); gap: ceiling − the method's own pick. "
             "The released code's summed score is its rule, kept for fidelity: it ranks a path found often below "
             "one found once.", "",
             "| model | method | " + " | ".join(LABELS[k] for k in names) + " | ceiling | selection gap |",
             "|---|---|" + "---|" * (len(names) + 2)]
    for key, r in pooled.items():
        n = _n(r, "new")
        cells = [_pct_ci(r["selectors_new"].get(k), n) for k in names]
        lines.append(f"| {model_label(r['model'], labels)} | `{key}` | " + " | ".join(cells) +
                     f" | {_pct_ci(r['any_candidate_correct_new'], n)} | {pct(r['selection_gap_new'])} |")
    return lines


def _categories(counts: dict[str, int] | None) -> str:
    """`computation_error 132, rule_violation 4` -> `computation 132 · rule 4`."""
    if not counts:
        return "-"
    return " · ".join(f"{k.split('_')[0]} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def shape_checks(rows: dict[str, dict], search: str = "sbt_b1_n32") -> list[dict]:
    """The paper's Countdown shape, checked on new-target accuracy; criteria whose rows are missing are left out.

    1. self-backtracking (b=1, N=32) at least 40 points above optimal-path SFT greedy;
    2. b=1 >= b=0 and 3. N=32 >= N=8 (test-time scaling);
    4. Best-of-N (log-prob selector) below self-backtracking at equal N;
    5. expert-iteration round 1 greedy >= 1.4 x round-0 (backtracking model) greedy;
    6. the last round's greedy >= the round-0 search.
    """
    acc = {k: r["accuracy_new"] for k, r in rows.items() if r.get("accuracy_new") is not None}
    out = []

    def check(criterion: str, keys: list[str], holds, measured) -> None:
        if all(k in acc for k in keys):
            vals = [acc[k] for k in keys]
            out.append({"criterion": criterion, "measured": measured(*vals), "holds": bool(holds(*vals))})

    pts = lambda x: f"{100 * x:.1f}"  # noqa: E731
    check(f"`{search}` ≥ `sft_greedy` + 40 points", [search, "sft_greedy"], lambda s, g: s - g >= 0.40 - 1e-9,
          lambda s, g: f"{pts(s)} vs {pts(g)} ({100 * (s - g):+.1f})")
    check("b=1 ≥ b=0 (N=32)", ["sbt_b1_n32", "sbt_b0_n32"], lambda a, b: a >= b, lambda a, b: f"{pts(a)} vs {pts(b)}")
    check("N=32 ≥ N=8 (b=1)", ["sbt_b1_n32", "sbt_b1_n8"], lambda a, b: a >= b, lambda a, b: f"{pts(a)} vs {pts(b)}")
    for n in (8, 16, 32):
        for b in (1, 0):
            if f"sbt_b{b}_n{n}" in acc:
                check(f"`best_of_n_{n}` < `sbt_b{b}_n{n}`", [f"best_of_n_{n}", f"sbt_b{b}_n{n}"], lambda x, y: x < y,
                      lambda x, y: f"{pts(x)} vs {pts(y)}")
                break
    rounds = sorted(int(m.group(1)) for k in acc if (m := re.fullmatch(r"ei(\d+)_greedy", k)))
    check("`ei1_greedy` ≥ 1.4 × `bt_greedy`", ["ei1_greedy", "bt_greedy"], lambda e, g: e >= 1.4 * g and e > 0,
          lambda e, g: f"{pts(e)} vs {pts(g)} (×{e / g:.2f})" if g else f"{pts(e)} vs {pts(g)}")
    if rounds:
        last = f"ei{rounds[-1]}_greedy"
        check(f"`{last}` ≥ `{search}` (round 0)", [last, search], lambda e, s: e >= s, lambda e, s: f"{pts(e)} vs {pts(s)}")
    return out


def seeds_markdown(per_seed: dict[int, dict[str, dict]], title: str) -> str:
    """Mean and spread (sample std, min-max) over seeds of every row's new- and seen-target accuracy."""
    import statistics

    seeds = sorted(per_seed)
    keys = sorted((k for k in per_seed[seeds[0]] if all(k in per_seed[s] for s in seeds)),
                  key=lambda k: row_order(per_seed[seeds[0]][k]))

    def stat(key: str, field: str) -> str:
        xs = [100 * per_seed[s][key][field] for s in seeds if per_seed[s][key][field] is not None]
        if not xs:
            return "-"
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        _, lo, hi = mean_interval(xs)
        return f"{statistics.mean(xs):.1f} ± {sd:.1f} (95% CI {lo:.1f} to {hi:.1f}; range {min(xs):.1f}-{max(xs):.1f})"

    lines = [f"# {title}: {len(seeds)} seeds", "",
             f"Accuracy in % ({VERIFIER_MODE} verifier): mean ± sample standard deviation over seed offsets "
             f"{', '.join(map(str, seeds))}, the mean's 95% t-interval across seeds, and the range.", "",
             "| method | new targets | seen targets | false claims (new) |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {stat(k, 'accuracy_new')} | {stat(k, 'accuracy_seen')} | {stat(k, 'false_claim_rate_new')} |"
              for k in keys]
    gains = [(k, base) for k in keys for base in ("bt_greedy",) if k.startswith("sbt_") and base in keys
             and all(per_seed[s][x]["accuracy_new"] is not None for s in seeds for x in (k, base))]
    if gains:
        lines += ["", "Gain over the same model's greedy decoding (new targets, points): mean ± sd (95% CI across "
                  "seeds; per seed).", "", "| search | gain | per seed |", "|---|---|---|"]
        for k, base in gains:
            xs = [100 * (per_seed[s][k]["accuracy_new"] - per_seed[s][base]["accuracy_new"]) for s in seeds]
            m, lo, hi = mean_interval(xs)
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            lines.append(f"| `{k}` − `{base}` | {m:+.1f} ± {sd:.1f} ({lo:+.1f} to {hi:+.1f}) | "
                         + " / ".join(f"{x:+.1f}" for x in xs) + " |")
    mean_rows = {k: {"accuracy_new": sum(per_seed[s][k]["accuracy_new"] for s in seeds) / len(seeds)} for k in keys
                 if all(per_seed[s][k]["accuracy_new"] is not None for s in seeds)}
    per_check = {s: {c["criterion"]: c for c in shape_checks(per_seed[s])} for s in seeds}
    mean_checks = shape_checks(mean_rows)
    if mean_checks:
        lines += ["", "## The paper's shape (new targets)", "",
                  "| criterion | on the means | " + " | ".join(f"seed +{s}" for s in seeds) + " |",
                  "|---|---|" + "---|" * len(seeds)]
        for c in mean_checks:
            cells = [("yes" if per_check[s][c["criterion"]]["holds"] else "no") if c["criterion"] in per_check[s] else "-"
                     for s in seeds]
            lines.append(f"| {c['criterion']} | {c['measured']}: {'yes' if c['holds'] else '**no**'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def method(row: dict) -> SearchConfig | None:
    """The search settings of a row's method (decoder, N, b, selector), from `config.METHODS`."""
    return SearchConfig(**METHODS[row["method"]]) if row.get("method") in METHODS else None


def _families(rows: dict[str, dict]) -> dict[str, list[str]]:
    """Curves of the scaling plot: Best-of-N (log-prob selector) and self-backtracking per b, per model."""
    out: dict[str, list[str]] = {}
    for key, r in sorted(rows.items(), key=lambda kv: row_order(kv[1])):
        m = method(r)
        if m is None or r["model"].startswith("ei"):
            continue
        if m.decoder == "best_of_n" and m.selector == "logprob":
            out.setdefault(f"Best-of-N (log-prob), {model_label(r['model'])}", []).append(key)
        elif m.decoder == "self_backtrack":
            out.setdefault(f"self-backtracking b={m.backtrack_budget}" + (
                "" if r["model"] == "bt" else f", {model_label(r['model'])}"), []).append(key)
    return out


def scaling_plot(rows: dict[str, dict]) -> bytes:
    """PNG: accuracy on new (solid) and seen (dashed) targets against N, per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for i, (label, keys) in enumerate(_families(rows).items()):
        keys = sorted(keys, key=lambda k: method(rows[k]).n)
        xs = [method(rows[k]).n for k in keys]
        color = f"C{i}"
        for split, fmt, alpha in (("new", "o-", 1.0), ("seen", "s--", 0.6)):
            ys = [rows[k][f"accuracy_{split}"] for k in keys]
            if any(y is None for y in ys):
                continue
            ax.errorbar(xs, ys, yerr=_yerr(ys, [_n(rows[k], split) for k in keys]), fmt=fmt, color=color,
                        alpha=alpha, capsize=3, label=f"{label} ({split})")
    for key, style in (("sft_greedy", ":"), ("bt_greedy", "-.")):
        if key in rows and rows[key]["accuracy_new"] is not None:
            ax.axhline(rows[key]["accuracy_new"], ls=style, color="grey", label=f"{key} (new)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per expansion)")
    ax.set_ylabel(f"accuracy ({VERIFIER_MODE})")
    ax.set_title("Test-time scaling (bars: 95% intervals)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png(fig)


def rounds_plot(rows: dict[str, dict], search_method: str = "sbt_b1_n32") -> bytes:
    """PNG: greedy and search accuracy (new targets) against expert-iteration round (0 = bt model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(int(r["model"][2:]) for r in rows.values()
                    if re.fullmatch(r"ei\d+", r["model"]) and r["method"] == "greedy")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, key0, fmt in (("greedy", "bt_greedy", "ei{}_greedy"), (search_method, search_method, "ei{}_" + search_method)):
        keys = [key0] + [fmt.format(r) for r in rounds]
        pts = [(r, rows[k]["accuracy_new"], _n(rows[k], "new")) for r, k in zip([0, *rounds], keys) if k in rows]
        if pts:
            xs, ys, ns = zip(*pts)
            ax.errorbar(xs, ys, yerr=_yerr(list(ys), list(ns)), fmt="o-", capsize=3, label=f"{label} (new targets)")
    ax.set_xlabel("expert-iteration round")
    ax.set_ylabel(f"accuracy ({VERIFIER_MODE})")
    ax.set_title("Expert iteration: slow search distilled into greedy (bars: 95%)")
    ax.set_xticks([0, *rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig)


def png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
    return buf.getvalue()


def table(rows: dict[str, dict]) -> list[dict]:
    """The report's table as records (for a Prefect table artifact): its row order, accuracies in %."""
    def pct(x):
        return None if x is None else round(100 * x, 1)

    return [
        {"model": model_label(r["model"]), "row": key,
         "seen targets %": pct(r["accuracy_seen"]), "new targets %": pct(r["accuracy_new"]),
         "new targets 95% interval": (lambda c: None if c is None else f"{pct(c[0])}-{pct(c[1])}")(
             ci(r["accuracy_new"], _n(r, "new"))),
         "seen targets % (paper mode)": pct(r["accuracy_seen_paper"]),
         "new targets % (paper mode)": pct(r["accuracy_new_paper"]),
         "tokens/problem": round(r["tokens_per_problem"], 1), "false claims (new) %": pct(r["false_claim_rate_new"]),
         "verifier": r["verifier_mode"]}
        for key, r in sorted(rows.items(), key=lambda kv: row_order(kv[1]))
    ]


def embed_images(markdown_text: str, images: dict[str, bytes]) -> str:
    """`![alt](name.png)` -> `![alt](data:image/png;base64,...)` for each named image: a markdown
    that shows its plots where relative paths mean nothing (a Prefect artifact)."""
    import base64

    for name, data in images.items():
        markdown_text = markdown_text.replace(f"]({name})", f"](data:image/png;base64,{base64.b64encode(data).decode()})")
    return markdown_text


# ---------------------------------------------------------------------------------------------
# GRPO: each tuned model's pass@k before and after, and its reward per step.

def grpo_summary(before: dict, after: dict, grpo_metrics: dict) -> dict:
    """One tuned model's figures from its two pass@k evaluations (`study.json`, kind samples) and its GRPO
    metrics: pass@k, best-of-k (log-prob), tokens and FLOPs per problem, before and after; steps and rewards."""
    def side(s: dict) -> dict:
        curves = s["curves"]
        return {"pass_at_k": {p["n"]: p["accuracy"] for p in curves["pass_at_n"]},
                "best_of_k": {p["n"]: p["accuracy"] for p in curves["best_of_n"]},
                "flops_per_problem": {p["n"]: p["flops_measured"] for p in curves["pass_at_n"]},
                "tokens_per_sample": curves["pass_at_n"][0]["tokens_per_problem"], "problems": s["problems"]}

    def per_problem(s: dict, k: int) -> list[float]:
        return [pass_at_k(r["n"], r["right"], k) for r in s["records"]["samples"]]

    ks = [p["n"] for p in after["curves"]["pass_at_n"]]
    change = {k: dict(zip(("mean", "low", "high"), paired_change(per_problem(before, k), per_problem(after, k))))
              for k in ks}
    history = grpo_metrics.get("grpo/history", [])
    tenth = max(len(history) // 10, 1)
    mean = lambda hs: sum(h["reward"] for h in hs) / len(hs) if hs else None  # noqa: E731
    return {"before": side(before), "after": side(after), "change": change, "steps": grpo_metrics.get("train/steps"),
            "rollouts": grpo_metrics.get("grpo/rollouts"),
            "reward_first_tenth": mean(history[:tenth]), "reward_last_tenth": mean(history[-tenth:]),
            "history": [{"step": h["step"], "reward": h["reward"]} for h in history]}


def grpo_markdown(tuned: dict[str, dict], labels: dict[str, str] | None = None) -> str:
    """The GRPO section: pass@k and best-of-k before → after (pass@1 with its 95% interval), tokens, rewards."""

    lines = ["## GRPO (reward: the strict verifier)", "",
             "Held-out problems, samples at the rollout temperature; pass@k by the unbiased estimator over max(k) "
             "samples (the verifier picks: an upper bound), best-of-k by mean log-prob (verifier-free). "
             "Before → after, in %; under it the change with its 95% interval, paired over the same problems "
             "(pass@1 after GRPO also with its 95% Wilson interval).", ""]
    ks = sorted({k for t in tuned.values() for k in t["after"]["pass_at_k"]}, key=int)
    head = " | ".join(f"pass@{k}" for k in ks)
    lines += [f"| model | {head} | best-of-{ks[-1]} | tokens/sample | GRPO steps (rollouts) | reward, first → last "
              "10% of steps |", "|---|" + "---|" * (len(ks) + 4)]
    for model, t in tuned.items():
        b, a = t["before"], t["after"]
        lo, hi = wilson(a["pass_at_k"][ks[0]] * a["problems"], a["problems"])
        cells = []
        for k in ks:
            d = t["change"][k]
            wilson_cell = f" [{pct(lo)}, {pct(hi)}]" if k == ks[0] else ""
            cells.append(f"{pct(b['pass_at_k'][k])} → {pct(a['pass_at_k'][k])}{wilson_cell}<br>"
                         f"{_signed(d['mean'])} [{_signed(d['low'])}, {_signed(d['high'])}]")
        reward = (f"{t['reward_first_tenth']:.3f} → {t['reward_last_tenth']:.3f}" if t["history"] else "-")
        lines.append(f"| {model_label(model, labels)} | {' | '.join(cells)} | {pct(b['best_of_k'][ks[-1]])} → "
                     f"{pct(a['best_of_k'][ks[-1]])} | {b['tokens_per_sample']:.1f} → {a['tokens_per_sample']:.1f} | "
                     f"{t['steps']} ({t['rollouts']}) | {reward} |")
    return "\n".join(lines) + "\n\n![GRPO: pass@k against FLOPs, reward per step](grpo.png)\n"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def grpo_plot(tuned: dict[str, dict], labels: dict[str, str] | None = None) -> bytes:
    """PNG: pass@k against decode FLOPs per problem before (dashed) and after (solid) GRPO; reward per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for i, (model, t) in enumerate(tuned.items()):
        name = model_label(model, labels)
        for when, style in (("before", "o--"), ("after", "o-")):
            side = t[when]
            ks = sorted(side["pass_at_k"], key=int)
            xs, ys = [side["flops_per_problem"][k] for k in ks], [side["pass_at_k"][k] for k in ks]
            left.plot(xs, ys, style, color=f"C{i}", alpha=0.6 if when == "before" else 1.0,
                      label=f"{name}, {when} GRPO")
            if when == "after":
                for k, x, y in zip(ks, xs, ys):
                    left.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(2, -9), fontsize=6)
        steps = [h["step"] for h in t["history"]]
        rewards = [h["reward"] for h in t["history"]]
        window = max(len(rewards) // 20, 1)
        smooth = [sum(rewards[max(0, j - window + 1): j + 1]) / len(rewards[max(0, j - window + 1): j + 1])
                  for j in range(len(rewards))]
        right.plot(steps, rewards, color=f"C{i}", alpha=0.25)
        right.plot(steps, smooth, color=f"C{i}", label=f"{name} (mean of {window} steps)")
    left.set_xscale("log")
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels overlap
    left.set_xlabel("decode FLOPs per problem (k samples)")
    left.set_ylabel(f"pass@k ({VERIFIER_MODE})")
    left.set_title("pass@k before and after GRPO")
    right.set_xlabel("GRPO step")
    right.set_ylabel("mean reward (share of rollouts verified)")
    right.set_title("Reward per step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png(fig)


def run(summaries: dict[str, str], out_dir: str, title: str, notes: list[str] = (),
        search_method: str = "sbt_b1_n32", labels: dict[str, str] | None = None,
        grpo: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Stage entry: summaries (model -> summary.json URI) -> report.md, metrics.json, two PNGs.

    `grpo[model]`: {"before", "after" (pass@k study.json URIs), "metrics" (grpo_metrics.json)} per model tuned;
    its figures go in a GRPO section, `grpo.png`, and a `grpo` field on the tuned model's rows (`grpo_{model}`).
    """
    rows = metrics({model: io.read_json(uri) for model, uri in summaries.items()})
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
    io.write_bytes(outputs["plot_scaling"], scaling_plot(rows))
    io.write_bytes(outputs["plot_rounds"], rounds_plot(rows, search_method))
    body = markdown(rows, title, notes, labels) + "\n![accuracy against N](accuracy_vs_n.png)\n\n![accuracy against rounds](accuracy_vs_rounds.png)\n"
    if tuned:
        outputs["grpo"] = io.write_json(tuned, io.join(out_dir, "grpo.json"))
        outputs["plot_grpo"] = io.join(out_dir, "grpo.png")
        io.write_bytes(outputs["plot_grpo"], grpo_plot(tuned, labels))
        body += "\n" + grpo_markdown(tuned, labels)
    io.write_bytes(outputs["report"], body.encode())
    return outputs


def _cell(row: dict | None) -> str:
    return "-" if row is None else f"{_pct_ci(row['accuracy_new'], _n(row, 'new'))} ({pct(row['accuracy_seen'])})"


def _grid_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    cell = f"{_cell(row)}, {row['tokens_per_problem']:.0f} tok"
    if row.get("rolled_back_share_new") is not None:
        cell += f", {pct(row['rolled_back_share_new'])}% rolled back"
    if row.get("any_candidate_correct_new") is not None:
        cell += f", {pct(row['any_candidate_correct_new'])}% any"
    return cell


def _grid_axes(grid: dict[str, dict]) -> tuple[list[int], list[int]]:
    """The budgets b and widths N of the grid's `sbt_b{b}_n{n}` rows."""
    searches = [m for r in grid.values() if (m := method(r)) and m.decoder == "self_backtrack"]
    bn = [(m.backtrack_budget, m.n) for m in searches]
    return sorted({b for b, _ in bn}), sorted({n for _, n in bn})


def _variant_methods(variants: dict[str, dict[str, dict]]) -> list[str]:
    """The methods every variant was evaluated with, in the report's order (greedy, then by b and N)."""
    if not variants:
        return []
    first = next(iter(variants.values()))
    shared = set.intersection(*(set(rows) for rows in variants.values()))
    return sorted(shared, key=lambda k: row_order(first[k]))


def ablation_markdown(variants: dict[str, dict[str, dict]], grid: dict[str, dict], title: str,
                      notes: list[str] = ()) -> str:
    """Two tables: data-mix variants (one backtracking model each) and the b x N search grid on the preset's model.

    `variants`: "group: label" -> report rows (`metrics`) of that variant's model; `grid`: rows of the preset's.
    """
    keys = _variant_methods(variants)
    lines = [f"# {title}: ablations", "",
             f"Accuracy in % on new targets with its 95% interval (seen targets in parentheses), {VERIFIER_MODE} "
             "verifier; the false-claim rate "
             f"is that of `{keys[-1] if keys else '-'}` on new targets.", "",
             "| ablation | variant | " + " | ".join(f"`{k}`" for k in keys) + " | false claims (new) |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for name, rows in variants.items():
        group, _, label = name.partition(": ")
        last = rows.get(keys[-1]) if keys else None
        lines.append(f"| {group} | {label} | " + " | ".join(_cell(rows.get(k)) for k in keys)
                     + f" | {pct(last['false_claim_rate_new']) if last else '-'} |")
    bs, ns = _grid_axes(grid)
    if bs and ns:
        lines += ["", "Self-backtracking on the preset's model: backtrack budget b (rows) against samples per "
                  "expansion N (columns); accuracy new (seen), generated tokens per problem, then on new targets the "
                  "share of searches that rolled back at least once and the share with a correct answer among "
                  "their candidates (what a perfect selector would reach).", "",
                  "| b \\ N | " + " | ".join(str(n) for n in ns) + " |", "|---|" + "---|" * len(ns)]
        for b in bs:
            lines.append(f"| {b} | " + " | ".join(_grid_cell(grid.get(f"sbt_b{b}_n{n}")) for n in ns) + " |")
    lines += selection_markdown(grid)
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def ablation_plot(variants: dict[str, dict[str, dict]], grid: dict[str, dict]) -> bytes:
    """PNG: left, accuracy (new) against N for each b; right, each data variant's accuracy (new) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    bs, ns = _grid_axes(grid)
    for i, b in enumerate(bs):  # distinct markers and dashes: equal budgets often give equal curves
        cells = [grid[f"sbt_b{b}_n{n}"] for n in ns if f"sbt_b{b}_n{n}" in grid]
        ys = [c["accuracy_new"] for c in cells]
        left.errorbar([n for n in ns if f"sbt_b{b}_n{n}" in grid], ys, yerr=_yerr(ys, [_n(c, "new") for c in cells]),
                      marker="osd^v"[i % 5], ls=["-", "--", ":"][i % 3], ms=9 - 2 * (i % 3), capsize=3,
                      label=f"b={b}")
    if "bt_greedy" in grid:
        left.axhline(grid["bt_greedy"]["accuracy_new"], ls=":", color="grey", label="greedy")
    left.set_xscale("log", base=2)
    left.set(xlabel="N (samples per expansion)", ylabel=f"accuracy, new targets ({VERIFIER_MODE})",
             title="Search budget b and width N")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    keys = _variant_methods(variants)
    width = 0.8 / max(len(keys), 1)
    names = list(variants)
    for i, k in enumerate(keys):
        vals = [variants[v][k]["accuracy_new"] if k in variants[v] else 0.0 for v in names]
        ns = [_n(variants[v][k], "new") if k in variants[v] else None for v in names]
        right.bar([j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))], vals, width, label=k,
                  yerr=_yerr(vals, ns), capsize=2)
    right.set_xticks(range(len(names)), [n.replace(": ", "\n") for n in names], fontsize=7)
    right.set(ylabel="accuracy, new targets", title="Data mix of the backtracking model (bars: 95%)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="y")
    return png(fig)


def run_ablations(variant_summaries: dict[str, str], grid_summary: str, out_dir: str, title: str,
                  notes: list[str] = ()) -> dict[str, str]:
    """Stage entry: evaluation summaries (variant name -> URI; the preset's grid) -> ablations.md/.json/.png."""
    variants = {name: metrics({"bt": io.read_json(uri)}) for name, uri in variant_summaries.items()}
    grid = metrics({"bt": io.read_json(grid_summary)})
    outputs = {"ablations": io.join(out_dir, "ablations.json"), "ablations_md": io.join(out_dir, "ablations.md"),
               "plot_ablations": io.join(out_dir, "ablations.png")}
    io.write_json({"variants": variants, "grid": grid}, outputs["ablations"])
    io.write_bytes(outputs["plot_ablations"], ablation_plot(variants, grid))
    body = ablation_markdown(variants, grid, title, list(notes)) + "\n![ablations](ablations.png)\n"
    io.write_bytes(outputs["ablations_md"], body.encode())
    return outputs


def run_seeds(metrics_uris: dict[int, str], out_dir: str, title: str) -> dict[str, str]:
    """Stage entry: metrics.json per seed offset -> seeds.md and seeds.json (every seed's rows)."""
    per_seed = {int(s): io.read_json(uri) for s, uri in metrics_uris.items()}
    outputs = {"seeds": io.join(out_dir, "seeds.json"), "seeds_md": io.join(out_dir, "seeds.md")}
    io.write_json({str(s): rows for s, rows in per_seed.items()}, outputs["seeds"])
    io.write_bytes(outputs["seeds_md"], seeds_markdown(per_seed, title).encode())
    return outputs
