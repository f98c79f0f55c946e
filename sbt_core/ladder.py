"""The compute ladder: where does self-backtracking start to pay?

A ladder is a base run config and a list of rungs, each a few overrides of it (model size, SFT
steps, the number of Countdown numbers). Each rung trains one model (the base config's backtracking
model, D_op ∪ D_back) through the pipeline's stages and evaluates greedy decoding, best-of-32 and
self-backtracking (b=1, N=32) on the held-out split. `report` reads what the stages wrote and puts
the rungs on one axis, training compute:

- training FLOPs = 6·N·D (`train/flops`: N parameters, D tokens processed);
- each accuracy with its 95% Wilson interval; the any-candidate ceiling of the search (a perfect
  selector) and every verifier-free selector of `selectors` on the same candidates;
- the gain over greedy (search − greedy on the same problems) with its paired 95% interval;
- the search's false-claim rate (answers that claim the target but fail the verifier) and the share of
  those that are computation errors;
- a log-linear trend of the gain against training FLOPs over the rungs of the base setting, with the
  compute where it would reach +10 and +40 points.

Config (`configs/ladder-cpu.yaml`): `name`, `base` (a preset name or path, or a mapping), `set` (overrides
for every rung), `rungs: {name: overrides}`, `model`, `methods`, `search`. Overrides are dotted paths or
nested mappings: `{sft.max_steps: 3600}` or `{sft: {max_steps: 3600}}`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator, model_validator

from sbt_core import io, metrics
from sbt_core.formatting import flops, pct, pct_interval
from sbt_core.config import (ConfigError, ExecutionConfig, OnPolicyConfig, RunConfig, _apply, _Config,
                             _known_methods, _load_tree, _set_dotted, _validate)

COMPUTATION = "computation_error"


class LadderConfig(_Config):
    name: str = Field("ladder", description="Ladder name (runs/<name>/ by default).")
    model: str = Field("bt", description="The model of each rung's config that the rung trains and evaluates.")
    methods: list[str] = Field(["greedy", "best_of_n_32", "sbt_b1_n32"], description="Methods evaluated per rung.")
    baseline: str = Field("greedy", description="The method the gain is measured against.")
    search: str = Field("sbt_b1_n32", description="The self-backtracking search whose gain is reported.")
    best_of: str | None = Field("best_of_n_32", description="The sampling baseline at the search's N (None: none).")
    rungs: dict[str, RunConfig] = Field(description="Rung name -> its run config (base + set + the rung's own).")
    onpolicy: dict[str, OnPolicyConfig] = Field({}, description="Rung name -> on-policy D_back for it: the rung "
                                                "trains on its data plus the wrong steps of `source` (a lever, "
                                                "left out of the trend).")
    execution: ExecutionConfig = ExecutionConfig()

    _methods = field_validator("methods")(_known_methods)

    @model_validator(mode="after")
    def _consistent(self):
        if not self.rungs:
            raise ValueError("rungs: a ladder needs at least one rung")
        for name, rung in self.rungs.items():
            if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or not name[0].isalnum():
                raise ValueError(f"rungs.{name}: a rung name is letters, digits, '.', '-' and '_' (it names a folder)")
            if self.model not in rung.models:
                raise ValueError(f"model: {self.model!r} is not one of rungs.{name}.models ({', '.join(rung.models)})")
        names = list(self.rungs)
        for name, op in self.onpolicy.items():
            if name not in self.rungs:
                raise ValueError(f"onpolicy.{name}: not one of rungs ({', '.join(names)})")
            if op.source in self.rungs and names.index(op.source) >= names.index(name):
                raise ValueError(f"onpolicy.{name}.source: rung {op.source!r} must come before {name!r}")
        for field in ("baseline", "search", "best_of"):
            value = getattr(self, field)
            if value is not None and value not in self.methods:
                raise ValueError(f"{field}: {value!r} is not one of methods ({', '.join(self.methods)})")
        return self


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted path: leaf value}; dotted keys may also be given directly."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def load_ladder_config(path: str | Path, overrides: list[str] = (),
                       resolve: Callable[[str], Path] = Path) -> LadderConfig:
    """A ladder YAML plus `key=value` overrides (e.g. `set.eval.limit=50`, `rungs.1m-1800.sft.max_steps=10`).
    `resolve` turns `base: tiny` into a path (the CLI: configs/tiny.yaml)."""
    tree = _apply(_load_tree(path), list(overrides))
    base = tree.pop("base", {})
    if isinstance(base, str):
        base = _load_tree(resolve(base))
    if not isinstance(base, dict):
        raise ConfigError(f"invalid configuration ({path}):\nbase: a preset name, a path or a mapping")
    shared = _flatten(tree.pop("set", None) or {})
    rungs = {}
    for name, own in (tree.get("rungs") or {}).items():
        rung = copy.deepcopy(base)
        for dotted, value in {**shared, **_flatten(own or {})}.items():
            _set_dotted(rung, dotted, value)
        rung["name"] = f"{tree.get('name', 'ladder')}-{name}"
        rungs[name] = rung
    tree["rungs"] = rungs
    return _validate(LadderConfig, tree, path)


# ---- the report -------------------------------------------------------------------------------------------

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
    gen = config.generate
    op = ladder.onpolicy.get(name)
    return {
        "rung": name,
        "lever": f"on-policy D_back from {op.source}" if op else None,
        "size": config.model_spec(ladder.model)[1].size,
        "numbers": getattr(gen, "num_numbers", None),
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
    the task does not; levers left out); the FLOPs where it reaches +10 and +40 points (None: it does not rise)."""
    setting = rows[0]["numbers"] if rows else None
    pts = [(math.log10(r["train_flops"]), r["gain"]) for r in rows
           if r["numbers"] == setting and r["train_flops"] and not r.get("lever")]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    intercept = my - slope * mx
    reach = {f"+{t}": (10 ** ((t / 100 - intercept) / slope) if slope > 0 else None) for t in (10, 40)}
    return {"numbers": setting, "rungs": len(pts), "intercept": intercept, "slope_per_decade": slope,
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
    lines += [f"| rung | size | numbers | SFT steps | train FLOPs | train min | problems | {ladder.baseline}{best} | "
              f"{ladder.search} | ceiling | gain over {ladder.baseline} | false claims | comp. |",
              "|---|---|---|---|---|---|---|---|" + ("---|" if ladder.best_of else "") + "---|---|---|---|---|"]
    for r in rows:
        a, ci = r["accuracy"], r["interval"]
        bo = f" | {_ci(a[ladder.best_of], ci[ladder.best_of])}" if ladder.best_of else ""
        lines.append(
            f"| {r['rung']} | {r['size']} | {r['numbers']} | {r['steps']} | {_flops(r['train_flops'])} | "
            f"{(r['train_seconds'] or 0) / 60:.1f} | {r['problems']} | {_ci(a[ladder.baseline], ci[ladder.baseline])}"
            f"{bo} | {_ci(a[ladder.search], ci[ladder.search])} | {_ci(r['ceiling'], r['ceiling_interval'])} | "
            f"{_signed_ci(r['gain'], r['gain_interval'])} | {_ci(r['false_claim_rate'], r['false_claim_interval'])}"
            f" | {pct(r['computation_share'])} |")
    levers = [r for r in rows if r.get("lever")]
    if levers:
        lines += ["", "Levers (left out of the trend): " + "; ".join(f"`{r['rung']}`: {r['lever']}" for r in levers)
                  + "."]
    names = sorted({k for r in rows for k in r["selectors"]}, key=lambda k: list(_selector_labels()).index(k))
    if names:
        labels = _selector_labels()
        lines += ["", f"## Selectors on `{ladder.search}`'s candidates (no verifier)", "",
                  "What each verifier-free rule would have picked among the same candidates, in % with 95% "
                  "intervals; selection gap = ceiling − the default's pick.", "",
                  "| rung | " + " | ".join(labels[k] for k in names) + " | ceiling | selection gap |",
                  "|---|" + "---|" * (len(names) + 2)]
        for r in rows:
            n = r["problems"]
            cells = [_ci(r["selectors"][k], metrics.wilson(r["selectors"][k] * n, n)) if k in r["selectors"] else "-"
                     for k in names]
            lines.append(f"| {r['rung']} | " + " | ".join(cells) +
                         f" | {pct(r['ceiling'])} | {pct(r['selection_gap'])} |")
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
        lines.append(f"Trend over the {t['rungs']} rungs with {t['numbers']} numbers: gain = "
                     f"{100 * t['intercept']:+.1f} {100 * t['slope_per_decade']:+.1f}·log10(FLOPs) points, so {reach} "
                     "(an extrapolation of a straight line in log-compute, to be read as an order of magnitude).")
    lines += ["", "![gain and false claims against training FLOPs](ladder.png)", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def _selector_labels() -> dict[str, str]:
    from sbt_core.selectors import LABELS

    return LABELS


def plot(rows: list[dict], ladder: LadderConfig) -> bytes:
    """Left: accuracy (greedy, best-of, search, ceiling) against training FLOPs; right: the gain over greedy
    and the false-claim rate. Error bars are 95% intervals; hollow markers: rungs of another setting or a lever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbt_core.report import png

    base = rows[0]["numbers"] if rows else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    series = [(ladder.baseline, "greedy", "tab:gray"), (ladder.search, "self-backtracking b=1 N=32", "tab:blue")]
    if ladder.best_of:
        series.insert(1, (ladder.best_of, "best-of-32 (log-prob)", "tab:orange"))
    for same in (True, False):
        part = sorted([r for r in rows if (r["numbers"] == base and not r.get("lever")) == same],
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


def report(rows: list[dict], ladder: LadderConfig, out_dir: str, notes: list[str] = ()) -> dict[str, str]:
    """ladder.md, ladder.json and ladder.png in out_dir."""
    data = {"name": ladder.name, "rungs": rows, "trend": trend(rows), "first_reaching_10": first_reaching(rows),
            "notes": list(notes)}
    made = {"ladder_json": io.write_json(data, io.join(out_dir, "ladder.json")),
            "ladder_md": io.join(out_dir, "ladder.md"), "ladder_png": io.join(out_dir, "ladder.png")}
    io.write_bytes(made["ladder_md"], markdown(rows, ladder, notes).encode())
    io.write_bytes(made["ladder_png"], plot(rows, ladder))
    return made
