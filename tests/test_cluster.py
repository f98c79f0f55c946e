"""The cluster path for real: a `prefect server`, a process work pool with a worker, deployments
registered by `sbt deploy`, runs triggered through the REST API and the Python client, a failure
injected and the flow run retried as the UI's Retry does, and every artifact in moto's S3.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.local_server import stop
from sbt_core import io
from tasks.stages import FAIL_FILE_ENV

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
POOL = "sbt-test-gpu"
RUN_DIR = "s3://sbt-test/cluster/run"
BEFORE = ["generate", "build-data-op", "build-data-bt", "sft-op"]
GRPO_STAGES = ["passk-bt", "grpo-bt", "passk-grpo-bt", "eval-grpo-bt"]  # smoke's GRPO round (bt model)
AFTER = ["sft-bt", "eval-sft-op", "eval-sft-bt", *GRPO_STAGES, "ei1-search", "ei1-distill", "ei1-sft", "ei1-evaluate",
         "report"]


@contextlib.contextmanager
def _client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def rest(api: str, method: str, path: str, body: dict | None = None):
    """One REST call; a 503 (the server's SQLite busy) is retried with backoff, as Prefect's own client does, and
    so is a GET that timed out (a server starved of CPU by the stages beside it; a GET is safe to repeat)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{api}{path}", method=method, data=data, headers={"Content-Type": "application/json"})
    for attempt in range(6):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 5:
                raise
            time.sleep(0.5 * 2**attempt)
        except TimeoutError:
            if method != "GET" or attempt == 5:
                raise
            time.sleep(0.5 * 2**attempt)


def wait_final(api: str, flow_run_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = rest(api, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} did not finish")


def task_states(api: str, flow_run_ids: list[str]) -> dict[str, list[str]]:
    runs = rest(api, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": flow_run_ids}}, "limit": 200})
    out: dict[str, list[str]] = {}
    for t in sorted(runs, key=lambda t: t["created"]):
        out.setdefault(t["name"], []).append(t["state"]["name"])
    return out


def subflow_ids(api: str, parent_id: str) -> list[str]:
    runs = rest(api, "POST", "/flow_runs/filter", {"limit": 50})
    parents = {t["id"] for t in rest(api, "POST", "/task_runs/filter",
                                     {"flow_runs": {"id": {"any_": [parent_id]}}, "limit": 200})}
    return [r["id"] for r in runs if r.get("parent_task_run_id") in parents]


@pytest.fixture(scope="module")
def cluster(prefect_server, s3, tmp_path_factory):
    """Deployments registered on a process pool, with one worker polling it."""
    api, home = prefect_server, tmp_path_factory.mktemp("worker")
    env = {**os.environ, **s3, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "SBT_CACHE": str(home / "cache"),
           FAIL_FILE_ENV: str(home / "fail-stages"),  # every flow run the worker starts reads it (stage runs too)
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    deploy = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "-c", "smoke", "--run-dir", RUN_DIR,
                             "--gpu-pool", POOL, "--cpu-pool", "sbt-test-cpu",
                             "--result-storage", "s3://sbt-test/prefect-results"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                              cwd=home, env=env, stdout=open(home / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    yield {"api": api, "env": env, "home": home, "deploy": deploy.stdout}
    stop(worker)  # SIGTERM, then SIGKILL to the group: Prefect's worker sometimes hangs in its graceful shutdown


def test_deploy_registers_every_deployment_with_a_form(cluster):
    api = cluster["api"]
    for name in ("sbt-pipeline/pipeline", "sbt-stage/gpu", "sbt-stage/cpu", "expert-iteration-round/round",
                 "grpo-round/round", "sbt-evaluate-latest/nightly"):
        dep = rest(api, "GET", f"/deployments/name/{name}")
        assert dep["work_pool_name"] in (POOL, "sbt-test-cpu"), name
    pipeline = rest(api, "GET", "/deployments/name/sbt-pipeline/pipeline")
    assert "config" in pipeline["parameter_openapi_schema"]["properties"]
    assert pipeline["parameters"]["run_dir"] == RUN_DIR
    nightly = rest(api, "GET", "/deployments/name/sbt-evaluate-latest/nightly")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    assert nightly["schedules"][0]["active"]  # a new deployment's nightly schedule is on, as prefect.yaml's
    assert "sbt-evaluate-latest/nightly" in cluster["deploy"] and "active (new deployment)" in cluster["deploy"]


def test_the_scheduler_creates_a_run_and_a_worker_finishes_it(cluster):
    """What a nightly schedule does, at a 20 s interval: the server's scheduler (not the test) creates
    the flow run, the worker runs it. SQLAlchemy 2.1 under prefect 3.8.8 broke exactly this."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from deployments.register import create_deployment
    from sbt_core.config import load_run_config

    cfg = load_run_config(ROOT / "configs" / "smoke.yaml")
    spec = {"entrypoint": "flows/pipeline.py:stage_flow", "name": "scheduled-test", "pool": POOL,
            "job_variables": {}, "tags": ["sbt", "test"], "schedule": {"interval": 20, "active": True},
            "parameters": {"task": "generate", "params": {"stage_name": "generate", "out_dir": f"{RUN_DIR}-scheduled",
                                                          "cfg": cfg.generate.model_dump(mode="json")}}}
    with _client(cluster["api"]) as client:
        _, deployment_id, note = create_deployment(client, spec, str(ROOT))
        assert note == "every 20 s: active (new deployment)"
        only_this = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))

        def runs_in(*types):
            return client.read_flow_runs(deployment_filter=only_this, limit=200, flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))))

        try:
            deadline = time.monotonic() + 240
            while True:
                runs = runs_in(StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.RUNNING)
                done = [r for r in runs if r.auto_scheduled and r.state.is_completed()]
                if done:
                    print("scheduled run:", done[0].name, done[0].auto_scheduled, done[0].expected_start_time,
                          done[0].state.name)  # shown with pytest -s
                    break
                assert time.monotonic() < deadline, ([(r.name, r.auto_scheduled, r.state.name) for r in runs],
                                                     (cluster["home"] / "worker.log").read_text()[-3000:])
                time.sleep(1)
        finally:
            client.pause_deployment(deployment_id)
            for run in runs_in(StateType.SCHEDULED, StateType.PENDING):
                client.delete_flow_run(run.id)
    assert io.read_json(f"{RUN_DIR}-scheduled/stage.json")["status"] == "done"


def test_rest_trigger_failure_retry_and_s3_artifacts(cluster):
    api, home = cluster["api"], cluster["home"]
    fail_file = home / "fail-stages"
    fail_file.write_text("sft-bt")
    dep = rest(api, "GET", "/deployments/name/sbt-pipeline/pipeline")
    run = rest(api, "POST", f"/deployments/{dep['id']}/create_flow_run",
               {"parameters": {"run_dir": RUN_DIR}})
    first = wait_final(api, run["id"])
    assert first["state"]["type"] == "FAILED", (home / "worker.log").read_text()[-3000:]
    states = task_states(api, [run["id"]])
    assert states["sft-bt"] == ["Failed"] and all(states[s] == ["Completed"] for s in BEFORE)

    fail_file.unlink()  # the cause is fixed; now what the UI's Retry does:
    rest(api, "POST", f"/flow_runs/{run['id']}/set_state",
         {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True})
    second = wait_final(api, run["id"])
    assert second["state"]["type"] == "COMPLETED", (home / "worker.log").read_text()[-3000:]
    states = task_states(api, [run["id"], *subflow_ids(api, run["id"])])
    for stage in BEFORE:  # ran once, in the first attempt; served from cache in the retry
        assert states[stage].count("Completed") == 1 and "Cached" in states[stage], (stage, states[stage])
    assert states["sft-bt"] == ["Failed", "Completed"]
    for stage in AFTER[1:]:
        assert states[stage] == ["Completed"], (stage, states[stage])

    metrics = json.loads(io.read_bytes(f"{RUN_DIR}/metrics.json"))
    assert "sbt_b1_n32" in metrics and "ei1_greedy" in metrics
    assert io.read_bytes(f"{RUN_DIR}/report.md").startswith(b"# smoke")
    for stage_dir in ("data", "sft-bt", "eval-sft-bt", "ei1/search", "report"):
        assert io.read_json(f"{RUN_DIR}/{stage_dir}/stage.json")["status"] == "done"
    assert io.exists(f"{RUN_DIR}/sft-bt/model/model.safetensors")
    # Prefect's own result storage points at the same bucket (flow results persisted there)
    assert io._fs("s3://sbt-test/prefect-results")[0].ls("sbt-test/prefect-results")
    check_artifacts(api, [run["id"], *subflow_ids(api, run["id"])], metrics)


def check_artifacts(api: str, flow_run_ids: list[str], metrics: dict) -> None:
    """The report with its plots inside, the table in the report's order and units, one progress bar a stage."""
    from sbt_core.config import load_run_config
    from sbt_core.reports.pipeline import Models

    row_order = Models(load_run_config(ROOT / "configs" / "smoke.yaml").report_models()).order

    arts = rest(api, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": flow_run_ids}}, "limit": 200})
    by_key = {a["key"]: a for a in sorted(arts, key=lambda a: a["created"])}  # newest wins
    report = by_key["sbt-report"]["data"]
    assert report.count("](data:image/png;base64,iVBORw0KGgo") == 3 and "](accuracy_vs_n.png)" not in report  # + grpo.png
    table = by_key["sbt-metrics"]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert [r["row"] for r in table] == sorted(metrics, key=lambda k: row_order(metrics[k]))
    first = table[0]
    assert first["new targets %"] == round(100 * metrics[first["row"]]["accuracy_new"], 1)
    progress = {k for k in by_key if k and k.startswith("progress-")}
    assert {"progress-generate", "progress-sft-bt", "progress-eval-sft-op", "progress-ei1-search"} <= progress, progress
    assert by_key["progress-sft-bt"]["data"] == 100


def test_python_client_triggers_an_expert_iteration_round_and_a_grpo_round(cluster):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    model_uri = f"{RUN_DIR}/sft-bt/model"
    assert io.exists(f"{model_uri}/model.safetensors"), "needs the pipeline run of the previous test"
    with temporary_settings(updates={PREFECT_API_URL: cluster["api"]}):
        run = run_deployment("expert-iteration-round/round", parameters={"round": 2, "model_uri": model_uri},
                             timeout=600)
        assert run.state.is_completed(), run.state
        assert io.read_json(f"{RUN_DIR}/ei2/eval/stage.json")["status"] == "done"
        # GRPO on the optimal-path model, which the preset does not tune: its four stages run on the GPU pool
        grpo = run_deployment("grpo-round/round", parameters={"model": "sft"}, timeout=600)
        assert grpo.state.is_completed(), grpo.state
        assert io.read_json(f"{RUN_DIR}/eval-grpo-op/stage.json")["status"] == "done"
        assert io.exists(f"{RUN_DIR}/grpo-op/model/model.safetensors")
        assert io.read_json(f"{RUN_DIR}/grpo-op/grpo_metrics.json")["train/steps"] == 4
        nightly = run_deployment("sbt-evaluate-latest/nightly", timeout=600)  # what the schedule starts
        assert nightly.state.is_completed(), nightly.state
    # smoke runs one round, so the newest model is round 1's (or sft-bt's, when round 1 kept it)
    assert io.exists(f"{RUN_DIR}/eval-latest")


HEAVY_STAGES = ["sft-op", "sft-bt", "eval-sft-op", "eval-sft-bt", *GRPO_STAGES, "ei1-search", "ei1-sft",
                "ei1-evaluate"]


def test_per_stage_runs_are_named_honest_and_a_stage_retry_resumes_the_pipeline(cluster):
    """execution.mode=deployments: SFT, search and evaluation run as `sbt-stage/gpu` flow runs named
    after their stage. sft-bt fails; the user retries *that stage's run* (the UI's Retry); the
    pipeline run goes on by itself, reusing the finished stage runs, and finishes."""
    from sbt_core.config import load_run_config

    api, home, run_dir = cluster["api"], cluster["home"], "s3://sbt-test/cluster/deployed"
    fail_file = home / "fail-stages"
    fail_file.write_text("sft-bt")
    cfg = load_run_config(ROOT / "configs" / "smoke.yaml",
                          ["execution.mode=deployments", "execution.cpu_deployment=null", "eval.limit=2"])
    dep = rest(api, "GET", "/deployments/name/sbt-pipeline/pipeline")
    run = rest(api, "POST", f"/deployments/{dep['id']}/create_flow_run",
               {"parameters": {"config": cfg.model_dump(mode="json"), "run_dir": run_dir}})
    first = wait_final(api, run["id"], timeout=900)
    assert first["state"]["type"] == "FAILED", (home / "worker.log").read_text()[-3000:]
    stage_dep = rest(api, "GET", "/deployments/name/sbt-stage/gpu")

    def stage_runs(pipeline_run_id: str) -> dict[str, list[dict]]:
        """The stage runs of one pipeline run, by name (their idempotency key: <root run id>/<stage>@<out_dir>)."""
        keys = [f"{pipeline_run_id}/{s}@{run_dir}/{d}" for s, d in zip(HEAVY_STAGES, STAGE_DIRS)]
        children = rest(api, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [stage_dep["id"]]},
                                                                         "idempotency_key": {"any_": keys}},
                                                           "limit": 100})
        out: dict[str, list[dict]] = {}
        for c in children:
            out.setdefault(c["name"], []).append(c)
        return out

    failed = stage_runs(run["id"])
    assert sorted(failed) == ["sft-bt", "sft-op"], sorted(failed)  # named after their stage; nothing after sft-bt
    assert failed["sft-bt"][0]["state"]["type"] == "FAILED"

    fail_file.unlink()  # the cause is fixed; the user presses Retry on the sft-bt run's page:
    sft_bt = failed["sft-bt"][0]["id"]
    rest(api, "POST", f"/flow_runs/{sft_bt}/set_state",
         {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True})
    assert wait_final(api, sft_bt)["state"]["type"] == "COMPLETED"
    final = wait_final(api, run["id"], timeout=900)  # resumed by the stage run's completion hook
    assert final["state"]["type"] == "COMPLETED", (home / "worker.log").read_text()[-3000:]
    assert final["run_count"] == 2

    runs = stage_runs(run["id"])
    assert sorted(runs) == sorted(HEAVY_STAGES)
    assert all(len(v) == 1 for v in runs.values()), {k: len(v) for k, v in runs.items()}  # one run per stage
    assert all(v[0]["state"]["type"] == "COMPLETED" for v in runs.values())
    assert runs["sft-bt"][0]["run_count"] == 2 and runs["sft-op"][0]["run_count"] == 1
    evals = [runs[s][0] for s in ("eval-sft-op", "eval-sft-bt")]  # independent: submitted together, run side by side
    when = datetime.datetime.fromisoformat
    assert max(when(r["start_time"]) for r in evals) < min(when(r["end_time"]) for r in evals), evals

    summary = json.loads(io.read_bytes(f"{run_dir}/run.json"))
    print("run.json after the stage retry:", json.dumps(summary, indent=1))  # shown with pytest -s
    rows = {r["stage"]: r for r in summary["stages"]}
    assert rows["sft-op"]["reused_run"] and rows["sft-bt"]["reused_run"]  # finished before this attempt
    assert summary["cached"] == ["generate", "build-data-op", "build-data-bt"]  # in process, done in attempt 1
    assert sorted(summary["ran"]) == sorted(HEAVY_STAGES + ["ei1-distill", "report"])
    assert json.loads(io.read_bytes(f"{run_dir}/metrics.json"))["bt_greedy"]["problems_per_split"] == 2

    # The same pipeline again: every stage run ends Cached and run.json says so.
    again = rest(api, "POST", f"/deployments/{dep['id']}/create_flow_run",
                 {"parameters": {"config": cfg.model_dump(mode="json"), "run_dir": run_dir}})
    assert wait_final(api, again["id"], timeout=900)["state"]["type"] == "COMPLETED"
    runs = stage_runs(again["id"])
    assert sorted(runs) == sorted(HEAVY_STAGES)
    assert {v[0]["state"]["name"] for v in runs.values()} == {"Cached"}
    summary = json.loads(io.read_bytes(f"{run_dir}/run.json"))
    assert summary["ran"] == [] and len(summary["cached"]) == len(summary["stages"])


STAGE_DIRS = ["sft-op", "sft-bt", "eval-sft-op", "eval-sft-bt", *GRPO_STAGES, "ei1/search", "ei1/sft", "ei1/eval"]


def test_storage_credentials_from_a_prefect_block(cluster, monkeypatch):
    """No AWS variables at all: sbt's I/O takes key, secret and endpoint from a RemoteFileSystem block."""
    from prefect.filesystems import RemoteFileSystem
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import stages

    env = cluster["env"]
    settings = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
                "client_kwargs": {"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": "us-east-1"}}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    with temporary_settings(updates={PREFECT_API_URL: cluster["api"]}):
        RemoteFileSystem(basepath="s3://sbt-test", settings=settings).save("sbt-creds", overwrite=True)
        monkeypatch.setenv(stages.STORAGE_BLOCK_ENV, "remote-file-system/sbt-creds")
        stages.use_storage_block()
    try:
        io.write_json({"ok": True}, "s3://sbt-test/block/check.json")
        assert io.read_json("s3://sbt-test/block/check.json") == {"ok": True}
    finally:
        io.set_storage_options({})


FAN_POOL = "sbt-test-fan"


def test_an_evaluation_fans_out_over_three_gpu_workers_and_a_killed_shard_is_retried_alone(cluster, tmp_path):
    """execution.shard_runs=3: the nightly evaluation's 8 shards (2 methods x 2 splits x 2) are flow runs of a GPU
    deployment whose pool has three workers, one device each (CUDA_VISIBLE_DEVICES 0, 1, 2; one run at a time).
    One shard's process is SIGKILLed in its first run (the OOM killer, a lost node): that shard alone is retried.
    The parent, on the other pool, gathers the bytes an in-process evaluation writes; the same run again sends no
    shard. Needs the models of the pipeline run of an earlier test."""
    import re

    from prefect.client.schemas.actions import WorkPoolCreate

    from deployments.register import base_job_template, create_deployment
    from flows.evaluate import latest_model
    from sbt_core import evaluate
    from sbt_core.config import load_run_config

    api, env, home = cluster["api"], cluster["env"], cluster["home"]
    cfg = load_run_config(ROOT / "configs" / "smoke.yaml", [
        "execution.mode=deployments", "execution.cpu_deployment=null", "execution.gpu_deployment=sbt-stage/fan",
        "execution.shard_runs=3", "eval.shard_size=2"])
    model = latest_model(RUN_DIR, cfg)  # raises when the earlier pipeline run is missing
    with _client(api) as client:
        client.create_work_pool(WorkPoolCreate(name=FAN_POOL, type="process",
                                               base_job_template=base_job_template("process", True)))
        create_deployment(client, {"entrypoint": "flows/pipeline.py:stage_flow", "name": "fan", "pool": FAN_POOL,
                                   "job_variables": {}, "parameters": {}, "tags": ["sbt", "stage", "gpu"]}, str(ROOT))
    killed = "eval-latest/sbt_b1_n32/val_new/shard-00001"
    (home / "fail-stages").write_text(f"{killed}:kill")  # read by every flow run; fires once
    workers = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", FAN_POOL, "--type",
                                 "process", "--name", f"gpu-{i}", "--limit", "1"], cwd=home,
                                env={**env, "CUDA_VISIBLE_DEVICES": str(i)}, stdout=open(home / f"gpu-{i}.log", "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True) for i in range(3)]
    try:
        nightly = rest(api, "GET", "/deployments/name/sbt-evaluate-latest/nightly")
        params = {"parameters": {"config": cfg.model_dump(mode="json"), "run_dir": RUN_DIR}}
        run = rest(api, "POST", f"/deployments/{nightly['id']}/create_flow_run", params)
        final = wait_final(api, run["id"], timeout=900)
        worker_logs = [(home / f"gpu-{i}.log").read_text() for i in range(3)]
        assert final["state"]["type"] == "COMPLETED", [w[-2000:] for w in worker_logs]

        fan = rest(api, "GET", "/deployments/name/sbt-stage/fan")
        shard_runs = rest(api, "POST", "/flow_runs/filter",
                          {"flow_runs": {"deployment_id": {"any_": [fan["id"]]}}, "limit": 100})
        units = [f"eval-latest/{m}/{s}/shard-{k:05d}" for m in cfg.eval.ei_methods for s in ("val_seen", "val_new")
                 for k in (0, 1)]
        # One flow run per shard, and one more for the killed shard's retry: a new run, the Crashed one left as it is
        assert sorted(r["name"] for r in shard_runs) == sorted([*units, killed])
        assert all(r["run_count"] == 1 for r in shard_runs)
        crashed = [r for r in shard_runs if r["state"]["type"] != "COMPLETED"]
        assert [(r["name"], r["state"]["type"]) for r in crashed] == [(killed, "CRASHED")]
        for r in shard_runs:  # keyed <this run>/<stage key>/<unit>, the retry's with /retry-1 after it
            unit = r["name"].removeprefix("eval-latest/")
            suffix = f"{unit}/retry-1" if r["name"] == killed and r is not crashed[0] else unit
            assert r["idempotency_key"].startswith(f"{run['id']}/") and r["idempotency_key"].endswith(f"/{suffix}")

        # Each run logged its device; the worker that started it (its own log says so) is the one with that device.
        started = [set(re.findall(r"Flow run '([^']+)' submitted to infrastructure", text)) for text in worker_logs]
        devices = {}
        for r in shard_runs:
            logs = rest(api, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [r["id"]]}}, "limit": 200})
            devices[r["id"]] = {m[1] for log in logs if (m := re.search(r"CUDA_VISIBLE_DEVICES=(\d)", log["message"]))}
            by_workers = {str(i) for i, names in enumerate(started) if r["name"] in names}
            if r is crashed[0]:  # killed: its last log lines may die with it
                assert devices[r["id"]] <= by_workers, (devices[r["id"]], by_workers)
            elif r["name"] == killed:  # two runs of one name: their workers together
                assert devices[r["id"]] and devices[r["id"]] <= by_workers, (devices[r["id"]], by_workers)
            else:
                assert devices[r["id"]] == by_workers, (r["name"], devices[r["id"]], by_workers)
        print("devices per shard run:", [(r["name"], sorted(devices[r["id"]])) for r in shard_runs])  # pytest -s
        assert set().union(*devices.values()) == {"0", "1", "2"}  # all three workers took shards
        when = datetime.datetime.fromisoformat
        done = [r for r in shard_runs if r is not crashed[0]]
        spans = [(when(r["start_time"]), +1) for r in done] + [(when(r["end_time"]), -1) for r in done]
        at_once = max(itertools.accumulate(d for _, d in sorted(spans)))  # an end before a start at the same time
        assert 2 <= at_once <= 3, at_once  # shards ran together, never more than the pool's three workers

        # The gathered stage: its record written by the parent, its bytes those of a serial evaluation here.
        out_dir = f"{RUN_DIR}/eval-latest/{model['key']}"
        assert io.read_json(f"{out_dir}/stage.json")["status"] == "done"
        serial = tmp_path / "serial"
        evaluate.run(model["outputs"]["model"], f"{RUN_DIR}/data", str(serial),
                     {m: cfg.eval.search_config(m) for m in cfg.eval.ei_methods}, domain=cfg.domain,
                     limit=cfg.eval.limit, splits=cfg.eval.splits)
        gathered = io.snapshot(io.localize_dir(out_dir))
        gathered.pop(".source.json")  # the download's own note of what it copied
        assert gathered == io.snapshot(serial)

        again = rest(api, "POST", f"/deployments/{nightly['id']}/create_flow_run", params)
        assert wait_final(api, again["id"], timeout=300)["state"]["type"] == "COMPLETED"
        after = rest(api, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [fan["id"]]}}})
        assert len(after) == len(shard_runs)  # cached: no shard sent again
    finally:
        for worker in workers:
            stop(worker)
