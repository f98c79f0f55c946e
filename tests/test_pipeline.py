"""The Prefect pipeline against a real `prefect server` process (one per test session).

Each `sbt run` here is a real subprocess reporting to that server; task and flow run states
are read back through the Prefect client. The smoke preset is lengthened a little (120 SFT
steps, a checkpoint every 40) so a kill can land inside SFT.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from sbt_core import io
from tasks.stages import FAIL_ENV

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["-c", "smoke", "--set", "sft.max_steps=120", "--set", "sft.save_steps=40"]
BEFORE_SFT_BT = ["generate", "build-data-op", "build-data-bt", "sft-op"]
GRPO_STAGES = ["passk-bt", "grpo-bt", "passk-grpo-bt", "eval-grpo-bt"]  # smoke's GRPO round on the bt model
CONTRACT_ROWS = ["sft_greedy", "sft_beam", "best_of_n_8", "best_of_n_16", "best_of_n_32", "bt_greedy", "bt_beam",
                 "sbt_b0_n8", "sbt_b0_n32", "sbt_b1_n8", "sbt_b1_n32", "ei1_greedy", "ei1_sbt_b1_n32",
                 "grpo_bt_greedy", "grpo_bt_sbt_b1_n32"]
pytestmark = pytest.mark.integration


def _env(api: str, fail: str | None = None) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop(FAIL_ENV, None)
    if fail:
        env[FAIL_ENV] = fail
    return env


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", *SMOKE, "--run-dir", str(run_dir), *extra]


def sbt_run(api: str, run_dir: Path, *extra: str, fail: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(run_dir, *extra), cwd=ROOT, env=_env(api, fail), capture_output=True, text=True,
                          timeout=600)


@contextlib.contextmanager
def _client(api: str):
    """A sync Prefect client talking to the test session's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def flow_run_ids(api: str) -> set:
    with _client(api) as c:
        return {fr.id for fr in c.read_flow_runs(limit=200)}


def new_runs(api: str, before: set) -> dict:
    """Flow runs created since `before`: {flow run id: (flow name, state name)} and task states by name."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client(api) as c:
        runs = [fr for fr in c.read_flow_runs(limit=200) if fr.id not in before]
        flows = {fr.id: (c.read_flow(fr.flow_id).name, fr.state.name) for fr in runs}
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flows))), limit=200)
    states: dict[str, list[str]] = {}
    for t in sorted(tasks, key=lambda t: t.created):
        if t.name.startswith(("expert-iteration-round", "grpo-round")):
            continue  # the parent's stand-in task run for a subflow, not a stage
        states.setdefault(t.name, []).append(t.state.name)
    return {"flows": flows, "tasks": states}


snapshot = io.snapshot  # artifact content hashes, wall-clock fields left out


@pytest.fixture(scope="module")
def finished(prefect_server, tmp_path_factory):
    """A smoke pipeline that fails in sft-bt, is rerun to completion, then rerun again."""
    api, run_dir = prefect_server, tmp_path_factory.mktemp("pipeline") / "run"
    record = {"api": api, "run_dir": run_dir}
    before = flow_run_ids(api)
    record["failed"] = sbt_run(api, run_dir, fail="sft-bt")
    record["failed_runs"] = new_runs(api, before)
    before = flow_run_ids(api)
    t0 = time.monotonic()
    record["rerun"] = sbt_run(api, run_dir)
    record["rerun_seconds"] = time.monotonic() - t0
    record["rerun_runs"] = new_runs(api, before)
    record["snapshot"] = snapshot(run_dir)
    before = flow_run_ids(api)
    record["cached"] = sbt_run(api, run_dir)
    record["cached_runs"] = new_runs(api, before)
    return record


def test_injected_failure_stops_the_flow_at_that_stage(finished):
    failed = finished["failed"]
    assert failed.returncode != 0
    assert "failure injected" in failed.stdout + failed.stderr
    tasks = finished["failed_runs"]["tasks"]
    assert tasks["sft-bt"] == ["Failed"]
    assert all(tasks[s] == ["Completed"] for s in BEFORE_SFT_BT)
    assert "eval-sft-bt" not in tasks and "report" not in tasks
    assert [state for name, state in finished["failed_runs"]["flows"].values()] == ["Failed"]


def test_rerun_runs_only_the_failed_stage_and_what_follows(finished):
    rerun = finished["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    tasks = finished["rerun_runs"]["tasks"]
    for stage in BEFORE_SFT_BT:
        assert set(tasks[stage]) == {"Cached"}, (stage, tasks[stage])  # generate also runs (cached) in the round
    after = ["sft-bt", "eval-sft-op", "eval-sft-bt", *GRPO_STAGES, "ei1-search", "ei1-distill", "ei1-sft",
             "ei1-evaluate", "report"]
    for stage in after:
        assert tasks[stage] == ["Completed"], (stage, tasks[stage])
    flows = sorted(finished["rerun_runs"]["flows"].values())
    assert flows == [("expert-iteration-round", "Completed"), ("grpo-round", "Completed"),
                     ("sbt-pipeline", "Completed")]


def test_report_and_metrics_follow_the_contract(finished):
    run_dir = finished["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(metrics) == sorted(CONTRACT_ROWS)
    for row in metrics.values():
        assert 0 <= row["accuracy_seen"] <= 1 and 0 <= row["accuracy_new"] <= 1
        assert row["tokens_per_problem"] > 0 and row["verifier_mode"] == "strict"
    report = (run_dir / "report.md").read_text()
    assert "| `sbt_b1_n32` |" in report and "expert iteration round 1" in report
    assert "## Expert iteration, round by round" in report and "| 1 | 8 |" in report  # 8 train problems searched
    assert (run_dir / "accuracy_vs_n.png").read_bytes()[:4] == b"\x89PNG"
    # GRPO on the bt model: its rows, pass@k before and after, rewards per step, the plot
    tuned = metrics["grpo_bt_greedy"]["grpo"]
    assert sorted(tuned["before"]["pass_at_k"], key=int) == ["1", "2", "4"] and tuned["steps"] == 4
    assert all(0 <= v <= 1 for side in ("before", "after") for v in tuned[side]["pass_at_k"].values())
    assert len(json.loads((run_dir / "grpo.json").read_text())["bt"]["history"]) == 4
    assert "## GRPO" in report and "SFT on D_op ∪ D_back + GRPO" in report and "pass@4" in report
    assert (run_dir / "grpo.png").read_bytes()[:4] == b"\x89PNG"
    with _client(finished["api"]) as c:
        # filtered on the server: a run writes one progress artifact per stage, more than a page of them
        metrics_artifacts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sbt-metrics"])))
        assert metrics_artifacts and metrics_artifacts[0].type == "table"
    manifest = json.loads((run_dir / "sft-bt" / "manifest.json").read_text())
    assert manifest["config_hash"] and manifest["code_version"] and manifest["inputs"][0]["content_hash"]


def test_rerunning_a_finished_pipeline_does_no_work(finished):
    cached = finished["cached"]
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert "nothing to do" in cached.stderr
    tasks = finished["cached_runs"]["tasks"]
    assert {s for per_stage in tasks.values() for s in per_stage} == {"Cached"}, tasks
    assert snapshot(finished["run_dir"]) == finished["snapshot"]


def test_a_torn_artifact_reruns_its_stage_with_a_clear_message(finished):
    """A half-written Parquet and a stage.json that is not JSON: named in the log, those stages rerun,
    the artifacts come out the same, and no pyarrow traceback reaches the user."""
    api, run_dir = finished["api"], finished["run_dir"]
    sft = run_dir / "data-op" / "sft.parquet"
    sft.write_bytes(sft.read_bytes()[: sft.stat().st_size // 2])
    (run_dir / "eval-sft-op" / "stage.json").write_text('{"stage": "eval-sft-op", "status": "do')
    leftovers = [run_dir / "eval-sft-op" / ".summary.json.k1ll3d.tmp", run_dir / ".report.md.k1ll3d.tmp"]
    for p in leftovers:  # what a write killed midway leaves (temp file + rename)
        p.write_bytes(b"half")
    before = flow_run_ids(api)
    proc = sbt_run(api, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "build-data-op: unreadable artifacts" in out and "sft.parquet (ArrowInvalid" in out
    assert "eval-sft-op: unreadable artifacts" in out and "stage.json (JSONDecodeError" in out
    assert "Traceback" not in out
    tasks = new_runs(api, before)["tasks"]
    assert tasks["build-data-op"] == ["Completed"] and tasks["eval-sft-op"] == ["Completed"]
    assert tasks["sft-op"] == ["Cached"]  # same key upstream: the rebuilt data is the same bytes
    assert not any(p.exists() for p in leftovers)
    assert snapshot(run_dir) == finished["snapshot"]


def test_kill_9_during_sft_then_rerun_gives_the_same_artifacts(finished, tmp_path):
    api, run_dir = finished["api"], tmp_path / "killed"
    proc = subprocess.Popen(_cmd(run_dir), cwd=ROOT, env=_env(api), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = run_dir / "sft-bt" / "checkpoints" / "checkpoint-40" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "sft-bt" / "model").exists(), "the kill landed after SFT finished"
    assert json.loads((run_dir / "sft-bt" / "stage.json").read_text())["status"] == "running"
    resumed = sbt_run(api, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "sft-bt" / "train_metrics.json").read_text())["train/resumed_from"].endswith("checkpoint-40")
    assert snapshot(run_dir) == finished["snapshot"]


def test_changed_config_reruns_only_what_depends_on_it(finished):
    api, run_dir = finished["api"], finished["run_dir"]
    before = flow_run_ids(api)
    proc = sbt_run(api, run_dir, "--set", "eval.limit=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = new_runs(api, before)["tasks"]
    ran = sorted(name for name, states in tasks.items() if "Completed" in states)
    assert ran == sorted(["eval-sft-op", "eval-sft-bt", "eval-grpo-bt", "ei1-evaluate", "report"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(row["problems_per_split"] == 2 for row in metrics.values())


def _studies(api: str, run_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    before = flow_run_ids(api)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args, *SMOKE, "--set", "eval.limit=2",
                           "--run-dir", str(run_dir)], cwd=ROOT, env=_env(api), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, new_runs(api, before)


def test_ablations_reuse_the_pipelines_model_and_train_one_model_per_variant(finished):
    api, run_dir = finished["api"], finished["run_dir"]
    sft_before = (run_dir / "sft-bt" / "stage.json").read_text()
    proc, runs = _studies(api, run_dir, "ablate", "--set", "ablations.search_grid=[sbt_b0_n8,sbt_b1_n8,sbt_b2_n8]",
                          "--set", "ablations.error_type_ratios={'1:2:2': [1, 2, 2], '1:1:1': [1, 1, 1]}")
    tasks = runs["tasks"]
    assert tasks["generate"] == tasks["build-data-bt"] == tasks["sft-bt"] == ["Cached"], tasks
    assert (run_dir / "sft-bt" / "stage.json").read_text() == sft_before
    trained = sorted(name for name in tasks if name.startswith("ablation-") and name.endswith("-sft"))
    assert trained == ["ablation-d-op-d-back-1-2-sft", "ablation-error-type-ratio-1-1-1-sft"]
    sft_rows = {tag: pq.read_metadata(run_dir / "ablations" / tag / "data-bt" / "sft.parquet").num_rows
                for tag in ("d-op-d-back-1-2", "error-type-ratio-1-1-1")}
    assert sft_rows["d-op-d-back-1-2"] > sft_rows["error-type-ratio-1-1-1"]  # 1:2 has twice the D_back rows
    md = (run_dir / "ablations" / "ablations.md").read_text()
    for line in ("| error-type ratio | 1:2:2 |", "| error-type ratio | 1:1:1 |", "| D_op:D_back | 1:1 |",
                 "| D_op:D_back | 1:2 |", "| b \\ N | 8 |", "| 2 | "):
        assert line in md, md
    assert (run_dir / "ablations" / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    assert "ablations:" in proc.stdout


def test_seeds_rerun_the_pipeline_per_offset_and_report_the_spread(finished):
    api, run_dir = finished["api"], finished["run_dir"]
    proc, runs = _studies(api, run_dir, "run", "--seeds", "2")
    flows = sorted(runs["flows"].values())
    assert flows.count(("sbt-pipeline", "Completed")) == 2 and ("sbt-seeds", "Completed") in flows
    assert set(runs["tasks"]["sft-bt"]) == {"Cached", "Completed"}  # offset 0 is the finished run itself
    seed1 = json.loads((run_dir / "seeds" / "seed1" / "data" / "manifest.json").read_text())
    assert seed1["config"]["seed"] == 1
    md = (run_dir / "seeds.md").read_text()
    assert md.startswith("# smoke: 2 seeds") and "| `sbt_b1_n32` |" in md and "## The paper's shape" in md
    assert "seeds:" in proc.stdout


def test_expert_iteration_replays_the_start_models_rows_and_restarts_each_round_from_it(finished):
    """expert_iteration.replay=1.0: a round trains on its verified outputs and as many rows of the backtracking
    model's own training set (the smoke model may verify none: the rows themselves are tested in test_data);
    continue_from_previous=false: round 2 fine-tunes the round-0 model, not round 1's (its search samples round
    1's). Only the rounds rerun (the search of round 1 is cached)."""
    api, run_dir = finished["api"], finished["run_dir"]
    before = flow_run_ids(api)
    proc = sbt_run(api, run_dir, "--set", "eval.limit=2", "--set", "expert_iteration.rounds=2",
                   "--set", "expert_iteration.replay=1.0", "--set", "expert_iteration.continue_from_previous=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = {name for name, states in new_runs(api, before)["tasks"].items() if "Completed" in states}
    assert {"ei1-distill", "ei1-sft", "ei2-search", "ei2-distill", "ei2-sft"} <= ran
    assert "ei1-search" not in ran and "sft-bt" not in ran
    old = io.read_parquet(str(run_dir / "data-bt" / "sft.parquet"))
    for r in (1, 2):
        stats = json.loads((run_dir / f"ei{r}" / "data" / "manifest.json").read_text())["stats"]
        rows = io.read_parquet(str(run_dir / f"ei{r}" / "data" / "sft.parquet")).to_pylist()
        assert stats["replayed"] == min(stats["distilled"], len(old)) and len(rows) == sum(stats.values())
        assert [row["id"] for row in rows] == list(range(len(rows)))
        replayed = {(row["prompt"], row["response"]) for row in rows[stats["distilled"]:]}
        assert replayed <= {(row["prompt"], row["response"]) for row in old.to_pylist()}

    def start(r):  # the model round r fine-tuned (or kept, when it verified nothing)
        sft = run_dir / f"ei{r}" / "sft"
        if (sft / "manifest.json").exists():
            return json.loads((sft / "manifest.json").read_text())["config"]["model"]["path"]
        return json.loads((sft / "stage.json").read_text())["outputs"]["model"]

    assert start(1) == start(2) == str(run_dir / "sft-bt" / "model")
    searched = json.loads((run_dir / "ei2" / "search" / "manifest.json").read_text())["config"]["model"]
    assert searched == json.loads((run_dir / "ei1" / "sft" / "stage.json").read_text())["outputs"]["model"]
    by_round = json.loads((run_dir / "report" / "rounds.json").read_text())
    assert [r["round"] for r in by_round] == [0, 1, 2] and all("change" in r["greedy"] for r in by_round[1:])


SUDOKU_STAGES = ["generate", "build-data-op", "build-data-bt", "sft-op", "sft-bt", "eval-sft-op", "eval-sft-bt",
                 *GRPO_STAGES, "ei1-search", "ei1-distill", "ei1-sft", "ei1-evaluate", "report"]


def test_the_sudoku_smoke_preset_runs_the_whole_pipeline(prefect_server, tmp_path):
    run_dir = tmp_path / "sudoku"
    cmd = [sys.executable, "-m", "flows.cli", "run", "-c", "smoke-sudoku", "--run-dir", str(run_dir)]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(prefect_server), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert [r["stage"] for r in run["stages"]] == SUDOKU_STAGES and run["cached"] == []
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert set(rows) == set(CONTRACT_ROWS) - {"grpo_bt_sbt_b1_n32"}  # the preset's GRPO model runs greedy only
    assert set(rows["grpo_bt_greedy"]["grpo"]["after"]["pass_at_k"]) == {"1", "2"}  # GRPO on Sudoku's verifier
    assert all(r["accuracy_seen"] is None and 0 <= r["accuracy_new"] <= 1 for r in rows.values())  # one split: val
    summary = json.loads((run_dir / "eval-sft-bt" / "summary.json").read_text())
    assert set(summary["greedy"]) == {"val"} and 0 <= summary["greedy"]["val"]["cell_accuracy"] <= 1
    data = io.read_parquet(str(run_dir / "data" / "val.parquet"))
    assert data.column_names == ["id", "puzzle", "solution", "givens"] and len(data) == 8
    sft = io.read_parquet(str(run_dir / "data-bt" / "sft.parquet")).to_pylist()
    assert {r["kind"] for r in sft} == {"optimal", "backtrack"} and sft[0]["prompt"].startswith("###Question: sudoku ")
    lengths = json.loads((run_dir / "data-bt" / "manifest.json").read_text())["stats"]["token_lengths"]
    assert lengths["optimal"]["max"] <= 80 and lengths["backtrack"]["mean"] < lengths["optimal"]["mean"]
    model = json.loads((run_dir / "sft-op" / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "(4,4)" in model and "###Question:" in model  # the Sudoku vocabulary


def test_a_models_mapping_trains_evaluates_and_reports_each_model(prefect_server, tmp_path):
    """Three Countdown models of the second paper (direct, DFS trace, think trace), no expert iteration."""
    run_dir = tmp_path / "models"
    models = ("{direct: {recipe: direct, label: direct solution, methods: [greedy, best_of_n_8]}, "
              "dfs: {recipe: dfs_trace, methods: [greedy]}, think: {recipe: think_trace, methods: [greedy]}}")
    cmd = [sys.executable, "-m", "flows.cli", "run", "-c", "smoke", "--run-dir", str(run_dir),
           "--set", f"models={models}", "--set", "expert_iteration.rounds=0", "--set", "generate.num_numbers=3",
           "--set", "generate.number_max=20", "--set", "sft.context_length=256", "--set", "eval.max_new_tokens=96",
           "--set", "grpo.models=[]"]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(prefect_server), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert [r["stage"] for r in run["stages"]] == [
        "generate", "build-data-direct", "build-data-dfs", "build-data-think", "sft-direct", "sft-dfs", "sft-think",
        "eval-sft-direct", "eval-sft-dfs", "eval-sft-think", "report"]
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert set(rows) == {"direct_greedy", "direct_best_of_n_8", "dfs_greedy", "think_greedy"}
    report = (run_dir / "report.md").read_text()
    assert "| direct solution | `direct_greedy` |" in report and "| SFT on DFS traces | `dfs_greedy` |" in report
    for tag, kind in (("direct", "direct"), ("dfs", "trace")):
        sft = io.read_parquet(str(run_dir / f"data-{tag}" / "sft.parquet")).to_pylist()
        assert {r["kind"] for r in sft} == {kind} and sft[0]["response"].startswith("Exploring Operation: ")
        assert sft[0]["prompt"] == f"Current State: {sft[0]['target']}:{sft[0]['nums']}, Operations: []\n"
        vocab = json.loads((run_dir / f"sft-{tag}" / "model" / "tokenizer.json").read_text())["model"]["vocab"]
        assert "Exploring Operation:" in vocab
        tokenizer = json.loads((run_dir / f"sft-{tag}" / "model" / "tokenizer_config.json").read_text())
        assert tokenizer["sbt_prompt"] == "state"  # every decoder gives the model the root state
