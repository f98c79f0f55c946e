"""The seed study's report: every row of the run's report, over seeds (mean, spread, intervals, the paper's shape)."""

from __future__ import annotations

from sbt_core import io
from sbt_core.metrics import mean_interval
from sbt_core.reports.pipeline import VERIFIER_MODE, Models, method, shape_checks


def seeds_markdown(per_seed: dict[int, dict[str, dict]], models: Models, title: str) -> str:
    """Mean and spread (sample std, min-max) over seeds of every row's new- and seen-target accuracy."""
    import statistics

    seeds = sorted(per_seed)
    keys = sorted((k for k in per_seed[seeds[0]] if all(k in per_seed[s] for s in seeds)),
                  key=lambda k: models.order(per_seed[seeds[0]][k]))

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
    bt = models.searching()
    gains = [(k, base) for k in keys for base in (models.key(bt, "greedy"),)
             if per_seed[seeds[0]][k]["model"] == bt and (m := method(per_seed[seeds[0]][k])) is not None
             and m.decoder == "self_backtrack" and base in keys
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
    per_check = {s: {c["criterion"]: c for c in shape_checks(per_seed[s], models)} for s in seeds}
    mean_checks = shape_checks(mean_rows, models)
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


def run(metrics_uris: dict[int, str], out_dir: str, title: str, models: dict[str, dict]) -> dict[str, str]:
    """Stage entry: metrics.json per seed offset -> seeds.md and seeds.json (every seed's rows); `models`:
    `RunConfig.report_models()`."""
    per_seed = {int(s): io.read_json(uri) for s, uri in metrics_uris.items()}
    outputs = {"seeds": io.join(out_dir, "seeds.json"), "seeds_md": io.join(out_dir, "seeds.md")}
    io.write_json({str(s): rows for s, rows in per_seed.items()}, outputs["seeds"])
    io.write_bytes(outputs["seeds_md"], seeds_markdown(per_seed, Models(models), title).encode())
    return outputs
