"""The equal-compute study: its report logic on hand-made curves, its stage on a trained model, and the
`sbt-study` flow end to end against the session's real Prefect server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbt_core import io, metrics, study
from sbt_core.reports import study as study_report
from sbt_core.config import StudyEvalConfig
from sbt_core.domains import get

ROOT = Path(__file__).resolve().parent.parent


def _pts(key: str, xs, accs, problems=100):
    return [{key: x, "accuracy": a, "problems": problems, "tokens_per_problem": f, "flops_measured": f,
             "flops_formula": f} for x, f, a in zip(xs, xs, accs)]


def _studies():
    """A direct model (n = 1, 8, 64 at 100, 800, 6400 FLOPs) and a trace model (budgets at 50 ... 3200 FLOPs)."""
    direct = {"kind": "samples", "curves": {
        "pass_at_n": [{**p, "n": n} for p, n in zip(_pts("n", [100, 800, 6400], [0.30, 0.60, 0.80]), (1, 8, 64))],
        "best_of_n": [{**p, "n": n} for p, n in zip(_pts("n", [100, 800, 6400], [0.30, 0.35, 0.36]), (1, 8, 64))],
    }}
    trace = {"kind": "budget", "curves": {"greedy": _pts("budget", [50, 400, 3200], [0.05, 0.50, 0.55])}}
    return {"direct": direct, "dfs": trace}


def test_compute_levels_come_from_the_direct_models_n_and_each_series_gets_its_best_point_within_them():
    studies = _studies()
    all_series = study_report.series(studies, {"dfs": "DFS"})
    assert [s["label"] for s in all_series] == ["direct · pass@n (verifier picks)", "direct · best-of-n (log-prob)",
                                                "DFS · greedy, token budget"]
    at = study_report.levels(all_series)
    assert at == {"low": 100, "middle": 800, "high": 6400}
    won = study_report.winners(all_series, at)
    # Low: the trace's 50-FLOP point (5%) is all it can afford; the direct model's n=1 wins, clearly.
    assert won["low"]["verifier_free"]["winner"] == "direct · best-of-n (log-prob)"
    assert won["low"]["verifier_free"]["clear"]
    # Middle: DFS at 400 FLOPs (50%) beats best-of-8 (35%) without a verifier, loses to pass@8 (60%) with one.
    assert won["middle"]["verifier_free"]["winner"] == "DFS · greedy, token budget"
    assert won["middle"]["verifier_free"]["runner_up"] == "direct · best-of-n (log-prob)"
    assert won["middle"]["with_verifier"]["winner"] == "direct · pass@n (verifier picks)"
    assert not won["middle"]["with_verifier"]["clear"]  # 60% vs 50% of 100 problems: the intervals overlap
    assert won["high"]["with_verifier"]["accuracy"] == 0.80
    assert study_report.best_within(all_series[2]["points"], 49) is None


def test_the_papers_direction_at_each_level_is_its_two_best_rows_at_n_1_8_and_the_largest():
    paper = {"budgets": [256, 512, 1024, 2048, 4096], "ns": [1, 2, 4, 8, 16],
             "rows": {"DFS": [10, 20, 30, 40, 50], "direct": [15, 16, 17, 45, 60], "think": [12, 30, 46, 53, 59]}}
    assert study_report.paper_direction(paper, "low") == "direct 15%, think 12%"
    assert study_report.paper_direction(paper, "middle") == "think 53%, direct 45%"  # n = 8: the fourth column
    assert study_report.paper_direction(paper, "high") == "direct 60%, think 59%"


def test_the_wilson_interval_covers_the_proportion_and_narrows_with_more_problems():
    lo, hi = metrics.wilson(50, 100)
    assert lo < 0.5 < hi and round(hi - lo, 3) == 0.192
    lo2, hi2 = metrics.wilson(500, 1000)
    assert hi2 - lo2 < (hi - lo) / 3
    assert metrics.wilson(0, 10)[0] == 0 and metrics.wilson(10, 10)[1] == 1
    assert all(metrics.wilson(n, n)[1] == 1 and metrics.wilson(0, n)[0] == 0 for n in range(1, 600))  # no rounding below


def test_the_mistakes_analysis_counts_only_problems_both_models_solve():
    studies = {
        "direct": {"kind": "samples", "records": {"samples": [
            {"right": 2, "n": 4, "first_right": 3, "expected_samples": 5 / 3},
            {"right": 0, "n": 4, "first_right": None, "expected_samples": None},
            {"right": 4, "n": 4, "first_right": 1, "expected_samples": 1.0}]}},
        "dfs": {"kind": "budget", "records": {"greedy": [
            {"solved": True, "tokens": 300, "dead_ends": 4},
            {"solved": True, "tokens": 500, "dead_ends": 9},  # the direct model never solves this one
            {"solved": True, "tokens": 100, "dead_ends": 0}]}},
    }
    [row] = study_report.mistakes(studies, {"dfs": "DFS"})
    assert row["both_solve"] == 2 and row["backtracking"] == "DFS"
    assert row["mean_dead_ends"] == 2.0 and row["dead_ends_histogram"] == {0: 1, 1: 0, 2: 0, 3: 1}
    assert row["mean_first_right_sample"] == 2.0 and row["mean_expected_samples"] == pytest.approx(4 / 3)
    assert row["backtracking_solves"] == 3 and row["direct_solves_any"] == 2


def test_dead_ends_are_the_branches_a_trace_abandons_before_its_answer(data_dir):
    countdown = get("countdown")
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 300).to_pylist()
    rng = np.random.default_rng(0)
    seen_failures = False
    for p in problems:
        trace = countdown.trace(p, "dfs", rng)
        if not countdown.claims_goal(trace):
            continue
        before = countdown.final(trace)
        assert countdown.dead_ends(trace) == before.count("No Solution")  # nothing after the goal counts
        seen_failures |= countdown.dead_ends(trace) > 0
        assert countdown.dead_ends(countdown.trace(p, "direct", rng)) == 0
    assert seen_failures
    assert countdown.dead_ends("3+4=7\n7*2=14<backtrack>") == 1
    # A model's malformed goal line (no `a,b equal:` before it) still ends the count there.
    assert countdown.dead_ends("5,7 unequal: No Solution\nGoal Reached\n3,4 unequal: No Solution") == 1
    sudoku = get("sudoku")
    response = "guess (1,1) [1 2]=1\n(1,2)=2\nnocand (2,2)\nrevert (1,1)\n(1,1)=2\nGoal Reached!\nrevert (9,9)"
    assert sudoku.dead_ends(response) == 1


def test_the_study_stage_writes_every_kind_of_curve(trained, data_dir, tmp_path):
    _, model, _ = trained
    cfg = StudyEvalConfig(split="val_new", limit=6, ns=[4, 1, 2], budgets=[40, 8], direct_max_new_tokens=40,
                          search_methods=["sbt_b0_n8", "sbt_b1_n8"], batch_rows=512)
    s = io.read_json(study.run(model, str(data_dir), str(tmp_path / "s"), cfg, kind="samples")["study"])
    assert s["problems"] == 6 and s["split"] == "val_new" and s["tokens_per_second"] > 0
    assert set(s["curves"]) == {"pass_at_n", "best_of_n", "majority_at_n"}
    pts = s["curves"]["pass_at_n"]
    assert [p["n"] for p in pts] == [1, 2, 4] and [p["accuracy"] for p in pts] == sorted(p["accuracy"] for p in pts)
    assert pts[2]["flops_measured"] > pts[0]["flops_measured"] > 0
    assert len(s["records"]["samples"]) == 6 and all(r["n"] == 4 for r in s["records"]["samples"])
    b = io.read_json(study.run(model, str(data_dir), str(tmp_path / "b"), cfg, kind="budget")["study"])
    assert set(b["curves"]) == {"greedy", "sampled"}
    g = b["curves"]["greedy"]
    assert [p["budget"] for p in g] == [8, 40] and g[0]["tokens_per_problem"] <= 8
    assert g[1]["tokens_per_problem"] >= g[0]["tokens_per_problem"] and g[0]["accuracy"] <= g[1]["accuracy"]
    assert sum(r["solved"] for r in b["records"]["greedy"]) / 6 == pytest.approx(g[-1]["accuracy"])
    s = io.read_json(study.run(model, str(data_dir), str(tmp_path / "x"), cfg, kind="search", max_new_tokens=40)["study"])
    assert [p["method"] for p in s["curves"]["greedy"]] == ["greedy"]
    search = s["curves"]["search"]
    assert {p["method"] for p in search} == {"sbt_b0_n8", "sbt_b1_n8"} and all(p["N"] == 8 for p in search)
    assert search[0]["tokens_per_problem"] > s["curves"]["greedy"][0]["tokens_per_problem"]
    with pytest.raises(ValueError, match="kind must be one of"):
        study.run(model, str(data_dir), str(tmp_path / "y"), cfg, kind="beam")


@pytest.mark.integration
def test_the_study_flow_trains_evaluates_reports_and_caches(prefect_server, tmp_path):
    import httpx

    run_dir = tmp_path / "study"
    env = {**__import__("os").environ, "PREFECT_API_URL": prefect_server}
    cmd = [sys.executable, "-m", "flows.cli", "study", "-c", "smoke-study", "--run-dir", str(run_dir)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    # Per part: the pipeline's training order (every model's data, then every SFT), then every model's curves
    # (submitted together), then GRPO and its curves.
    assert run["cached"] == [] and run["ran"] == [
        "countdown-generate",
        "countdown-build-data-direct", "countdown-build-data-dfs", "countdown-build-data-sbt",
        "countdown-sft-direct", "countdown-sft-dfs", "countdown-sft-sbt",
        "countdown-study-direct", "countdown-study-dfs", "countdown-study-sbt",
        "countdown-grpo-direct", "countdown-study-grpo-direct",
        "sudoku-generate",
        "sudoku-build-data-direct", "sudoku-build-data-dfs", "sudoku-sft-direct", "sudoku-sft-dfs",
        "sudoku-study-direct", "sudoku-study-dfs",
        "study-report"]
    summary = json.loads((run_dir / "study.json").read_text())
    assert set(summary["parts"]) == {"countdown", "sudoku"}
    cd = summary["parts"]["countdown"]
    assert set(cd["winners"]) == {"low", "middle", "high"}
    assert set(cd["evaluations"]) == {"direct", "grpo_direct", "dfs", "sbt"}  # GRPO after the direct model's SFT
    assert any(s["label"] == "direct + GRPO · pass@n (verifier picks)" for s in cd["series"])
    assert {s["label"] for s in cd["series"]} >= {"direct · pass@n (verifier picks)", "DFS · greedy, token budget",
                                                   "self-backtracking · self-backtracking search (b, N)"}
    assert all(e["tokens_per_second"] > 0 for e in cd["evaluations"].values())
    assert [(m["backtracking"], m["direct"]) for m in cd["mistakes"]] == [("DFS", "direct"), ("DFS", "direct + GRPO")]
    md = (run_dir / "study.md").read_text()
    assert "## countdown" in md and "## sudoku" in md and "### Who wins" in md and "The paper's figures" in md
    assert md.count("| final loss | choice | result | verdict | copy |") == 2  # what each model learnt, by role
    for part in ("countdown", "sudoku"):
        assert (run_dir / f"study-{part}.png").read_bytes()[:4] == b"\x89PNG"
    vocab = json.loads((run_dir / "countdown" / "sft-dfs" / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "Exploring Operation:" in vocab
    arts = httpx.post(f"{prefect_server}/artifacts/filter", timeout=30,
                      json={"artifacts": {"key": {"any_": ["sbt-study", "sbt-study-winners"]}}, "limit": 50}).json()
    assert {a["key"] for a in arts} == {"sbt-study", "sbt-study-winners"}
    markdown = next(a["data"] for a in arts if a["key"] == "sbt-study")
    assert "data:image/png;base64," in markdown  # the plots travel inside the artifact
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((run_dir / "run.json").read_text())
    assert rerun["ran"] == [] and len(rerun["cached"]) == len(run["ran"])


def test_a_study_stage_sent_through_a_deployment_gets_its_configs_back():
    """`execution.mode: deployments` sends stage arguments as JSON; the study's come back typed."""
    from tasks.stages import HEAVY, coerce_params

    cfg = StudyEvalConfig(limit=7, ns=[1, 4])
    params = coerce_params("study-eval", {"cfg": cfg.model_dump(mode="json"), "kind": "samples", "domain": "sudoku"})
    assert params["cfg"] == cfg and isinstance(params["cfg"], StudyEvalConfig) and params["kind"] == "samples"
    assert "study-eval" in HEAVY  # decoding goes to the GPU pool


def test_a_study_eval_fanned_out_to_other_processes_gathers_what_the_serial_one_writes(trained, data_dir, tmp_path,
                                                                                       monkeypatch):
    """Each kind's shards go out as JSON units (`execution.shard_runs`) to two worker processes, last first; the
    gathering process loads no model; study.json equals the serial run's but its wall time, and a rerun sends
    nothing."""
    import concurrent.futures
    import multiprocessing

    from sbt_core.search import run as search_run
    from sbt_core.search.common import run_packed

    _, model, _ = trained
    cfg = StudyEvalConfig(split="val_new", limit=6, shard_size=2, ns=[1, 4], budgets=[8, 40], direct_max_new_tokens=40,
                          search_methods=["sbt_b1_n8"], batch_rows=512)
    kinds = {"samples": {}, "budget": {}, "search": {"max_new_tokens": 40}}
    serial = {kind: study.run(model, str(data_dir), str(tmp_path / "serial" / kind), cfg, kind=kind, **kw)["study"]
              for kind, kw in kinds.items()}
    sent = []
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))

    def fan_out(units):
        sent.extend(units)
        calls = json.loads(json.dumps([[{"entry": u.entry, "kwargs": u.kwargs}] for u in reversed(units)]))
        list(pool.map(run_packed, calls))  # only JSON crosses to a worker

    def timeless(uri):
        return {k: v for k, v in io.read_json(uri).items() if k not in ("seconds", "tokens_per_second")}

    def rows(folder):
        return [io.read_json(str(p))["rows"] for p in sorted((folder / "shards").glob("*.json"))]

    monkeypatch.setattr(search_run, "load", lambda *a, **k: pytest.fail("the gathering process loaded the model"))
    with pool:
        for kind, kw in kinds.items():
            out = tmp_path / "fanned" / kind
            fanned = study.run(model, str(data_dir), str(out), cfg, kind=kind, fan_out=fan_out, **kw)["study"]
            assert [u.name for u in sent] == ["shard-00000", "shard-00001", "shard-00002"]
            assert timeless(fanned) == timeless(serial[kind]) and timeless(fanned)["problems"] == 6
            assert rows(out) == rows(tmp_path / "serial" / kind) and len(rows(out)) == 3
            sent.clear()
            study.run(model, str(data_dir), str(out), cfg, kind=kind, fan_out=fan_out, **kw)
            assert sent == []  # every shard is written
