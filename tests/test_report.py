"""The report's shape checks, seed aggregation and ablation tables, on hand-made rows."""

from __future__ import annotations

import pytest

from sbt_core.config import RunConfig
from sbt_core.reports import ablations, grpo, pipeline, seeds
from sbt_core.reports.pipeline import Models

# The default run's models, as the pipeline names them: sft, bt (round 0), ei1..ei3.
MODELS = RunConfig().report_models()
SPLITS = ("val_seen", "val_new")


def _model_method(key: str) -> tuple[str, str]:
    """The default models' row key back into (model, method)."""
    if key.startswith("best_of_n"):
        return "sft", key
    if key.startswith("sbt_"):
        return "bt", key
    model, _, method = key.partition("_")
    return model, method


def _row(new: float, seen: float | None = None, key: str | None = None) -> dict:
    seen = new if seen is None else seen
    model, method = _model_method(key) if key else ("?", "?")
    return {"model": model, "method": method, "accuracy_new": new, "accuracy_seen": seen, "accuracy_new_paper": new, "accuracy_seen_paper": seen,
            "false_claim_rate_new": 0.1,
            "tokens_per_problem": 10.0, "false_claim_categories_new": {"computation_error": 3, "not_reached": 1}}


PAPER = {  # the paper's Table 1 shape (new targets), rounded
    "sft_greedy": 0.29, "best_of_n_8": 0.28, "best_of_n_32": 0.25, "bt_greedy": 0.30, "sbt_b0_n32": 0.60,
    "sbt_b1_n8": 0.62, "sbt_b1_n32": 0.74, "ei1_greedy": 0.45, "ei3_greedy": 0.75,
}


def _by_criterion(rows: dict) -> dict[str, bool]:
    return {c["criterion"]: c["holds"] for c in pipeline.shape_checks(rows, Models(MODELS))}


def test_the_papers_numbers_pass_every_check():
    checks = _by_criterion({k: _row(v, key=k) for k, v in PAPER.items()})
    assert len(checks) == 7 and all(checks.values()), checks
    assert "`best_of_n_8` < `sbt_b1_n8`" in checks and "`ei3_greedy` ≥ `sbt_b1_n32` (round 0)" in checks


@pytest.mark.parametrize("change, failing", [
    ({"sbt_b1_n32": 0.68}, ["`sbt_b1_n32` ≥ `sft_greedy` + 40 points"]),
    ({"ei3_greedy": 0.70}, ["`ei3_greedy` ≥ `sbt_b1_n32` (round 0)"]),
    ({"sbt_b0_n32": 0.80}, ["b=1 ≥ b=0 (N=32)"]),
    ({"best_of_n_32": 0.74}, ["`best_of_n_32` < `sbt_b1_n32`"]),
    ({"ei1_greedy": 0.41}, ["`ei1_greedy` ≥ 1.4 × `bt_greedy`"]),
])
def test_each_check_fails_on_its_own_violation(change, failing):
    checks = _by_criterion({k: _row(v, key=k) for k, v in {**PAPER, **change}.items()})
    assert sorted(k for k, ok in checks.items() if not ok) == sorted(failing)


def test_checks_whose_rows_are_missing_are_left_out():
    checks = _by_criterion({"sft_greedy": _row(0.1), "sbt_b1_n32": _row(0.6)})
    assert checks == {"`sbt_b1_n32` ≥ `sft_greedy` + 40 points": True}


def test_report_markdown_shows_categories_and_the_shape():
    rows = {k: {**_row(v), "model": "sft" if k.startswith(("sft", "best")) else "bt"} for k, v in PAPER.items()
            if not k.startswith("ei")}
    md = pipeline.markdown(rows, Models(MODELS), "countdown", "t")
    assert "computation 3 · not 1" in md and "## The paper's shape" in md and "| **no** |" not in md


def test_seeds_markdown_gives_mean_spread_and_per_seed_checks():
    per_seed = {0: {k: _row(v, key=k) for k, v in PAPER.items()},
                1: {k: _row(v, key=k) for k, v in {**PAPER, "sbt_b1_n32": 0.64}.items()},
                2: {k: _row(v, key=k) for k, v in {**PAPER, "sbt_b1_n32": 0.84}.items()}}
    md = seeds.seeds_markdown(per_seed, Models(MODELS), "t")
    # sd 10 over 3 seeds: the mean's t-interval is 74 ± 4.303 x 10 / sqrt(3)
    assert "| `sbt_b1_n32` | 74.0 ± 10.0 (95% CI 49.2 to 98.8; range 64.0-84.0) |" in md
    # bt_greedy is 30 in every seed: gains +44, +34, +54
    assert "| `sbt_b1_n32` − `bt_greedy` | +44.0 ± 10.0 (+19.2 to +68.8) | +44.0 / +34.0 / +54.0 |" in md
    line = next(x for x in md.splitlines() if x.startswith("| `sbt_b1_n32` ≥ `sft_greedy` + 40"))
    assert line.endswith("| yes | no | yes |") and "74.0 vs 29.0 (+45.0): yes" in line


def test_ablation_tables_and_plot():
    grid = {f"sbt_b{b}_n{n}": {**_row(0.1 * b + n / 100), "model": "bt", "method": f"sbt_b{b}_n{n}"}
            for b in (0, 1, 2) for n in (8, 16, 32)}
    grid["bt_greedy"] = {**_row(0.05), "model": "bt", "method": "greedy"}
    variants = {"error-type ratio: 1:2:2": grid,  # the preset's model carries the whole grid
                "D_op:D_back: 1:2": {"bt_greedy": {**_row(0.07), "model": "bt", "method": "greedy"},
                                     "sbt_b1_n32": {**_row(0.5), "model": "bt", "method": "sbt_b1_n32"}}}
    md = ablations.ablation_markdown(variants, grid, Models(MODELS), "new targets", "t")
    assert "| ablation | variant | `bt_greedy` | `sbt_b1_n32` | false claims (new) |" in md
    assert "| D_op:D_back | 1:2 | 7.0 (7.0) | 50.0 (50.0) | 10.0 |" in md
    assert "| error-type ratio | 1:2:2 | 5.0 (5.0) | 42.0 (42.0) | 10.0 |" in md
    assert "| 2 | 28.0 (28.0), 10 tok | 36.0 (36.0), 10 tok | 52.0 (52.0), 10 tok |" in md
    assert ablations.ablation_plot(variants, grid, Models(MODELS))[:4] == b"\x89PNG"


def test_summary_counts_false_claims_rollbacks_and_what_a_perfect_selector_would_reach():
    import pyarrow as pa

    from sbt_core.domains import DOMAINS
    from sbt_core.evaluate import summarize
    from sbt_core.search.common import Result
    from sbt_core.search.run import results_table

    problems = pa.table({"id": [0, 1, 2], "nums": [[3, 5], [3, 5], [2, 4]], "target": [8, 8, 6]})
    right, bent = "3+5=8\nGoal Reached!", "3*5=8\nGoal Reached!"
    results = [Result(right, [{"response": right, "score": -1.0}], rounds=1),
               Result(bent, [{"response": bent, "score": -0.5}, {"response": right, "score": -2.0}], rounds=2),
               Result("2+4=7", [{"response": "2+4=7", "score": -3.0}], rounds=3)]
    countdown = DOMAINS["countdown"]
    s = summarize(results_table(problems, results, 1.0, countdown), countdown)
    assert s["accuracy_strict"] == pytest.approx(1 / 3)
    assert s["false_claim_rate"] == pytest.approx(1 / 3)  # the bent answer claims the goal; the last one does not
    assert s["false_claim_categories"] == {"computation_error": 1}
    assert s["any_candidate_correct_strict"] == pytest.approx(2 / 3)
    assert s["rolled_back_share"] == pytest.approx(2 / 3)
    rows = pipeline.metrics({"bt": {"sbt_b1_n32": {"val_new": s}}}, Models(MODELS), SPLITS)
    assert rows["sbt_b1_n32"]["rolled_back_share_new"] == pytest.approx(2 / 3)
    cell = ablations._grid_cell(rows["sbt_b1_n32"])
    assert cell.endswith("66.7% rolled back, 66.7% any")


def test_seeds_rows_follow_the_report_order_not_the_names():
    rows = {k: {**_row(0.3), "model": m, "method": meth} for k, m, meth in [
        ("best_of_n_16", "sft", "best_of_n_16"), ("best_of_n_8", "sft", "best_of_n_8"),
        ("ei1_greedy", "ei1", "greedy"), ("sbt_b1_n32", "bt", "sbt_b1_n32"), ("sft_greedy", "sft", "greedy")]}
    md = seeds.seeds_markdown({0: rows, 1: rows}, Models(MODELS), "t")  # metrics.json comes back sorted by name
    order = [line.split("`")[1] for line in md.splitlines() if line.startswith("| `") and "≥" not in line]
    assert order[:5] == ["sft_greedy", "best_of_n_8", "best_of_n_16", "sbt_b1_n32", "ei1_greedy"]


def _samples_study(rights: list[int], n: int = 4) -> dict:
    """A pass@k evaluation (`study.json`, kind samples) of len(rights) problems with n samples each."""
    from sbt_core.metrics import pass_at_k

    curves = {c: [{"n": k, "accuracy": sum(pass_at_k(n, r, k) for r in rights) / len(rights),
                   "flops_measured": 1e6 * k, "tokens_per_problem": 10.0 * k} for k in (1, 2, 4)]
              for c in ("pass_at_n", "best_of_n")}
    return {"kind": "samples", "problems": len(rights), "curves": curves,
            "records": {"samples": [{"right": r, "n": n} for r in rights]}}


def test_grpo_summary_pairs_before_and_after_on_the_same_problems(tmp_path):
    before, after = _samples_study([0, 1, 2, 4]), _samples_study([1, 1, 2, 4])
    history = [{"step": s, "reward": 0.1 * s} for s in range(1, 11)]
    t = grpo.grpo_summary(before, after, {"train/steps": 10, "grpo/rollouts": 320, "grpo/history": history})
    assert t["before"]["pass_at_k"][1] == pytest.approx(7 / 16) and t["after"]["pass_at_k"][1] == pytest.approx(8 / 16)
    assert t["change"][1]["mean"] == pytest.approx(1 / 16) and t["change"][4]["mean"] == pytest.approx(1 / 4)
    assert t["reward_first_tenth"] == pytest.approx(0.1) and t["reward_last_tenth"] == pytest.approx(1.0)
    md = grpo.grpo_markdown({"sft": t}, {"sft": MODELS["sft"]["label"]})
    assert "| SFT on optimal paths (D_op) | 43.8 → 50.0 [" in md and "+6.2 [" in md and "pass@4" in md
    assert grpo.grpo_plot({"sft": t})[:4] == b"\x89PNG"


def test_every_accuracy_carries_its_interval_and_pooled_methods_get_the_selector_rows():
    def split(acc, **extra):
        return {"problems": 200, "accuracy_strict": acc, "accuracy_paper": acc, "categories_strict": {},
                "categories_paper": {}, "false_claim_rate": 0.1, "false_claim_categories": {"computation_error": 20},
                "tokens_per_problem": 10.0, **extra}

    summaries = {"bt": {"greedy": {"val_new": split(0.5)},
                        "sbt_b1_n32": {"val_new": split(0.6, any_candidate_correct_strict=0.9, selection_gap=0.3,
                                                        selectors={"logprob": 0.6, "released_sum": 0.2,
                                                                   "majority": 0.65, "likelihood_vote": 0.64,
                                                                   "value": 0.4})}}}
    rows = pipeline.metrics(summaries, Models(MODELS), SPLITS)
    md = pipeline.markdown(rows, Models(MODELS), "countdown", "t")
    assert "| SFT on D_op ∪ D_back | `bt_greedy` | 50.0 [43.1, 56.9] (50.0) |" in md  # Wilson, 200 problems
    assert "## Selection without a verifier (new targets)" in md  # val_new alone is still new targets
    selection = md.split("## Selection")[1]
    row = next(line for line in selection.splitlines() if line.startswith("| SFT on D_op ∪ D_back | `sbt_b1_n32` | 60.0 ["))
    assert "65.0 [" in row and "| 90.0 [" in row and row.endswith("| 30.0 |")
    assert "bt_greedy" not in selection  # one sample per problem: nothing to select
    assert pipeline.table(rows, Models(MODELS))[0]["new targets 95% interval"] == "43.1-56.9"


def test_rounds_section_counts_each_round_and_pairs_its_change_on_the_same_problems(tmp_path):
    import pyarrow as pa

    from sbt_core import io
    from sbt_core.reports import rounds

    def evaluation(name, greedy, search):
        for method, correct in (("greedy", greedy), ("sbt_b1_n32", search)):
            io.write_parquet(pa.table({"id": list(range(len(correct))), "correct_strict": correct}),
                             str(tmp_path / name / method / "val_new" / "results.parquet"))
        return io.write_json({}, str(tmp_path / name / "summary.json"))

    parts = [{"eval": evaluation("r0", [True, False, False, False], [True, True, False, False])}]
    for r, (greedy, search) in enumerate([([True, True, True, False], [True, True, True, False])], 1):
        searched = io.write_parquet(pa.table({"id": list(range(7))}), str(tmp_path / f"s{r}" / "results.parquet"))
        kept = io.write_json({"stats": {"distilled": 3, "replayed": 3}}, str(tmp_path / f"d{r}" / "manifest.json"))
        parts.append({"eval": evaluation(f"r{r}", greedy, search), "search": searched, "distill": kept})
    summary = rounds.summarise(parts, ["greedy", "sbt_b1_n32"], "val_new")
    assert [s["round"] for s in summary] == [0, 1] and "change" not in summary[0]["greedy"]
    assert summary[1]["searched"] == 7 and summary[1]["kept"] == 3 and summary[1]["replayed"] == 3
    g = summary[1]["greedy"]
    assert g["accuracy"] == 0.75 and g["change"]["mean"] == pytest.approx(0.5)
    assert g["change"]["low"] < 0.5 < g["change"]["high"]
    assert summary[1]["sbt_b1_n32"]["change"]["mean"] == pytest.approx(0.25)
    text = "\n".join(rounds.markdown(summary, ["greedy", "sbt_b1_n32"], "new targets"))
    assert "| 1 | 7 | 3 | 3 | 75.0 (+50.0 [" in text and "| 0 | - | - | - | 25.0 | 50.0 |" in text
