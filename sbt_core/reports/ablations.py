"""`sbt ablate`'s report: the backtracking model retrained on other data mixes, and its search over a b x N grid."""

from __future__ import annotations

from sbt_core import domains, io
from sbt_core.reports.formatting import pct, pct_ci, png, yerr
from sbt_core.reports.pipeline import VERIFIER_MODE, Models, method, metrics, n_of, selection_markdown


def _cell(row: dict | None) -> str:
    return "-" if row is None else f"{pct_ci(row['accuracy_new'], n_of(row, 'new'))} ({pct(row['accuracy_seen'])})"


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


def _variant_methods(variants: dict[str, dict[str, dict]], models: Models) -> list[str]:
    """The rows every variant has, in the report's order (greedy, then by b and N)."""
    if not variants:
        return []
    first = next(iter(variants.values()))
    shared = set.intersection(*(set(rows) for rows in variants.values()))
    return sorted(shared, key=lambda k: models.order(first[k]))


def _by_method(rows: dict[str, dict]) -> dict[str, dict]:
    return {r["method"]: r for r in rows.values()}


def ablation_markdown(variants: dict[str, dict[str, dict]], grid: dict[str, dict], models: Models, held: str,
                      title: str, notes: list[str] = ()) -> str:
    """Two tables: data-mix variants (one backtracking model each) and the b x N search grid on the preset's model.

    `variants`: "group: label" -> report rows (`metrics`) of that variant's model; `grid`: rows of the preset's.
    """
    keys = _variant_methods(variants, models)
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
            lines.append(f"| {b} | " + " | ".join(_grid_cell(_by_method(grid).get(f"sbt_b{b}_n{n}")) for n in ns)
                         + " |")
    lines += selection_markdown(grid, models, held)
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def ablation_plot(variants: dict[str, dict[str, dict]], grid: dict[str, dict], models: Models) -> bytes:
    """PNG: left, accuracy (new) against N for each b; right, each data variant's accuracy (new) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    bs, ns = _grid_axes(grid)
    cell = _by_method(grid)
    for i, b in enumerate(bs):  # distinct markers and dashes: equal budgets often give equal curves
        cells = [cell[f"sbt_b{b}_n{n}"] for n in ns if f"sbt_b{b}_n{n}" in cell]
        ys = [c["accuracy_new"] for c in cells]
        left.errorbar([n for n in ns if f"sbt_b{b}_n{n}" in cell], ys, yerr=yerr(ys, [n_of(c, "new") for c in cells]),
                      marker="osd^v"[i % 5], ls=["-", "--", ":"][i % 3], ms=9 - 2 * (i % 3), capsize=3,
                      label=f"b={b}")
    if "greedy" in cell:
        left.axhline(cell["greedy"]["accuracy_new"], ls=":", color="grey", label="greedy")
    left.set_xscale("log", base=2)
    left.set(xlabel="N (samples per expansion)", ylabel=f"accuracy, new targets ({VERIFIER_MODE})",
             title="Search budget b and width N")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    keys = _variant_methods(variants, models)
    width = 0.8 / max(len(keys), 1)
    names = list(variants)
    for i, k in enumerate(keys):
        vals = [variants[v][k]["accuracy_new"] if k in variants[v] else 0.0 for v in names]
        ns = [n_of(variants[v][k], "new") if k in variants[v] else None for v in names]
        right.bar([j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))], vals, width, label=k,
                  yerr=yerr(vals, ns), capsize=2)
    right.set_xticks(range(len(names)), [n.replace(": ", "\n") for n in names], fontsize=7)
    right.set(ylabel="accuracy, new targets", title="Data mix of the backtracking model (bars: 95%)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="y")
    return png(fig)


def run(variant_summaries: dict[str, str], grid_summary: str, out_dir: str, title: str, model: str,
        models: dict[str, dict], domain: str, notes: list[str] = ()) -> dict[str, str]:
    """Stage entry: evaluation summaries (variant name -> URI; the preset's grid), all of `model` (retrained per
    variant; `models`: `RunConfig.report_models()`) on `domain` -> ablations.md/.json/.png."""
    known = Models({model: models[model]})
    splits = domains.get(domain).eval_splits
    variants = {name: metrics({model: io.read_json(uri)}, known, splits) for name, uri in variant_summaries.items()}
    grid = metrics({model: io.read_json(grid_summary)}, known, splits)
    outputs = {"ablations": io.join(out_dir, "ablations.json"), "ablations_md": io.join(out_dir, "ablations.md"),
               "plot_ablations": io.join(out_dir, "ablations.png")}
    io.write_json({"variants": variants, "grid": grid}, outputs["ablations"])
    io.write_bytes(outputs["plot_ablations"], ablation_plot(variants, grid, known))
    held = domains.get(domain).split_labels[splits[-1]][0]
    body = ablation_markdown(variants, grid, known, held, title, list(notes)) + "\n![ablations](ablations.png)\n"
    io.write_bytes(outputs["ablations_md"], body.encode())
    return outputs
