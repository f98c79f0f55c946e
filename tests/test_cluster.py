"""The cluster path for real: a `prefect server`, a process work pool with a worker, deployments
registered by `sbt deploy`, runs triggered through the REST API and the Python client, a failure
injected and the flow run retried as the UI's Retry does, and every artifact in moto's S3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sbt_core import io
from tasks.stages import FAIL_FILE_ENV

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
POOL = "sbt-test-gpu"
RUN_DIR = "s3://sbt-test/cluster/run"
BEFORE = ["generate", "build-data-op", "build-data-bt", "sft-op"]
AFTER = ["sft-bt", "eval-sft-op", "eval-sft-bt", "ei1-search", "ei1-distill", "ei1-sft", "ei1-evaluate", "report"]


def rest(api: str, method: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{api}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else None


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
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:  # Prefect's worker sometimes hangs in its graceful shutdown
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def test_deploy_registers_every_deployment_with_a_form(cluster):
    api = cluster["api"]
    for name in ("sbt-pipeline/pipeline", "sbt-stage/gpu", "sbt-stage/cpu", "expert-iteration-round/round",
                 "sbt-evaluate-latest/nightly"):
        dep = rest(api, "GET", f"/deployments/name/{name}")
        assert dep["work_pool_name"] in (POOL, "sbt-test-cpu"), name
    pipeline = rest(api, "GET", "/deployments/name/sbt-pipeline/pipeline")
    assert "config" in pipeline["parameter_openapi_schema"]["properties"]
    assert pipeline["parameters"]["run_dir"] == RUN_DIR
    nightly = rest(api, "GET", "/deployments/name/sbt-evaluate-latest/nightly")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *"


def test_rest_trigger_failure_retry_and_s3_artifacts(cluster):
    api, home = cluster["api"], cluster["home"]
    fail_file = home / "fail-stages"
    fail_file.write_text("sft-bt")
    dep = rest(api, "GET", "/deployments/name/sbt-pipeline/pipeline")
    run = rest(api, "POST", f"/deployments/{dep['id']}/create_flow_run",
               {"parameters": {"run_dir": RUN_DIR}, "job_variables": {"env": {FAIL_FILE_ENV: str(fail_file)}}})
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


def test_python_client_triggers_an_expert_iteration_round(cluster):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    model_uri = f"{RUN_DIR}/sft-bt/model"
    assert io.exists(f"{model_uri}/model.safetensors"), "needs the pipeline run of the previous test"
    with temporary_settings(updates={PREFECT_API_URL: cluster["api"]}):
        run = run_deployment("expert-iteration-round/round", parameters={"round": 2, "model_uri": model_uri},
                             timeout=600)
        assert run.state.is_completed(), run.state
        assert io.read_json(f"{RUN_DIR}/ei2/eval/stage.json")["status"] == "done"
        nightly = run_deployment("sbt-evaluate-latest/nightly", timeout=600)  # what the schedule starts
        assert nightly.state.is_completed(), nightly.state
    # smoke runs one round, so the newest model is round 1's (or sft-bt's, when round 1 kept it)
    assert io.exists(f"{RUN_DIR}/eval-latest")


def test_pipeline_launches_heavy_stages_as_their_own_flow_runs(cluster):
    """execution.mode=deployments: SFT, search and evaluation run as `sbt-stage/gpu` flow runs."""
    from sbt_core.config import load_run_config

    api, run_dir = cluster["api"], "s3://sbt-test/cluster/deployed"
    cfg = load_run_config(ROOT / "configs" / "smoke.yaml",
                          ["execution.mode=deployments", "execution.cpu_deployment=null", "eval.limit=2"])
    dep = rest(api, "GET", "/deployments/name/sbt-pipeline/pipeline")
    run = rest(api, "POST", f"/deployments/{dep['id']}/create_flow_run",
               {"parameters": {"config": cfg.model_dump(mode="json"), "run_dir": run_dir}})
    final = wait_final(api, run["id"], timeout=900)
    assert final["state"]["type"] == "COMPLETED", (cluster["home"] / "worker.log").read_text()[-3000:]
    stage_dep = rest(api, "GET", "/deployments/name/sbt-stage/gpu")
    children = rest(api, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [stage_dep["id"]]}},
                                                        "limit": 100})
    names = sorted(t["name"] for t in rest(api, "POST", "/task_runs/filter",
                                            {"flow_runs": {"id": {"any_": [c["id"] for c in children]}}, "limit": 100}))
    assert names == sorted(["sft-op", "sft-bt", "eval-sft-op", "eval-sft-bt", "ei1-search", "ei1-sft", "ei1-evaluate"])
    assert all(c["state"]["type"] == "COMPLETED" for c in children)
    assert json.loads(io.read_bytes(f"{run_dir}/metrics.json"))["bt_greedy"]["problems_per_split"] == 2


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
