"""The GRPO section of the run's report: each tuned model's pass@k before and after, and its reward per step."""

from __future__ import annotations

from sbt_core.metrics import paired_change, pass_at_k, wilson
from sbt_core.reports.formatting import from_zero, pct, png
from sbt_core.reports.pipeline import VERIFIER_MODE


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
        lines.append(f"| {(labels or {}).get(model, model)} | {' | '.join(cells)} | {pct(b['best_of_k'][ks[-1]])} → "
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
        name = (labels or {}).get(model, model)
        for when, style in (("before", "o--"), ("after", "o-")):
            side = t[when]
            ks = sorted(side["pass_at_k"], key=int)
            xs, ys = [side["flops_per_problem"][k] for k in ks], [100 * side["pass_at_k"][k] for k in ks]
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
        right.plot(steps, smooth, color=f"C{i}", label=name if window == 1 else f"{name} (mean of {window} steps)")
    left.set_xscale("log")
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels overlap
    left.set_xlabel("decode FLOPs per problem (k samples)")
    left.set_ylabel(f"pass@k, % ({VERIFIER_MODE})")
    from_zero(left, 10)
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps are whole
    from_zero(right, 0.1)
    left.set_title("pass@k before and after GRPO")
    right.set_xlabel("GRPO step")
    right.set_ylabel("mean reward (share of rollouts verified)")
    right.set_title("Reward per step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png(fig)
