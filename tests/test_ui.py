"""What a user sees in the Prefect UI, checked in headless Chromium (opt-in: `-m slow`).

A real `prefect server` with its UI, the smoke pipeline run against it with sft-bt failing once and
then rerun; Chromium renders the pages the README's "In the Prefect UI" section names. Screenshots
go to $SBT_SCREENSHOTS (default: the test's tmp dir) and are not committed; the assertions read
the rendered DOM. Needs Debian's `chromium` (`apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import re
from pathlib import Path

import pytest
from test_cluster import rest

from flows.local_server import start as start_prefect_server
from flows.local_server import stop

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _post(api: str, path: str, body: dict):
    """A POST that retries the server's 503 (SQLite busy: seen once right after the kill drill's runs)."""
    return rest(api, "POST", path, body)


def chromium(url: str, png: Path, height: int = 1100) -> str:
    """Render `url` (JavaScript included), save a screenshot `height` pixels tall, return the DOM."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size=1440,{height}", "--virtual-time-budget=15000"]
    subprocess.run([*args, f"--screenshot={png}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


def _wait(api: str, run_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{api}/flow_runs/{run_id}", timeout=30) as r:
            run = json.loads(r.read())
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise TimeoutError(run_id)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`sbt run` twice (sft-bt failing, then a rerun), and the deployed pipeline on a process worker in
    both execution modes with sft-bt failing, so the UI has each kind of failed run to retry."""
    if not CHROMIUM:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    home = tmp_path_factory.mktemp("prefect-ui")
    proc, api = start_prefect_server(home, ui=True)
    run_dir = home / "run"
    fail_file = home / "fail-stages"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "SBT_FAIL_STAGES_FILE": str(fail_file),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "-c", "smoke", "--run-dir", str(run_dir)]
    fail_file.write_text("sft-bt")
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=600).returncode != 0
    fail_file.unlink()
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    deploy = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "-c", "smoke", "--run-dir",
                             str(home / "deployed"), "--gpu-pool", "ui-gpu", "--cpu-pool", "ui-cpu"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "ui-gpu"], cwd=home,
                              env=env, stdout=open(home / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    fail_file.write_text("sft-bt")
    dep = json.loads(urllib.request.urlopen(f"{api}/deployments/name/sbt-pipeline/pipeline", timeout=30).read())
    from sbt_core.config import load_run_config

    per_stage = load_run_config(ROOT / "configs" / "smoke.yaml", ["execution.mode=deployments",
                                                                 "execution.cpu_deployment=null"])
    runs = {"deployed": _post(api, f"/deployments/{dep['id']}/create_flow_run", {}),
            "per_stage": _post(api, f"/deployments/{dep['id']}/create_flow_run",
                               {"parameters": {"config": per_stage.model_dump(mode="json"),
                                               "run_dir": str(home / "per-stage")}})}
    for run in runs.values():
        assert _wait(api, run["id"])["state"]["type"] == "FAILED", (home / "worker.log").read_text()[-3000:]
    shots = Path(os.environ.get("SBT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    yield {"api": api, "ui": api.removesuffix("/api"), "shots": shots, "runs": runs}
    stop(worker)
    stop(proc)


def test_flow_runs_show_the_failed_and_the_finished_pipeline(ui):
    dom = chromium(f"{ui['ui']}/runs", ui["shots"] / "1-runs.png")
    assert "sbt-pipeline" in dom and "Failed" in dom and "Completed" in dom


def _has_retry_button(dom: str) -> bool:
    return re.search(r">\s*Retry\s*<", dom) is not None


def test_a_failed_deployed_pipeline_run_offers_retry(ui):
    dom = chromium(f"{ui['ui']}/runs/flow-run/{ui['runs']['deployed']['id']}", ui["shots"] / "2-failed-run.png")
    assert _has_retry_button(dom) and "sft-bt" in dom and "Failed" in dom


def test_a_failed_stage_run_offers_retry(ui):
    """execution.mode=deployments: the failed stage's own run (named sft-bt) has the Retry button."""
    runs = _post(ui["api"], "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["sft-bt"]}}, "limit": 5})
    failed = next(r for r in runs if r["state"]["type"] == "FAILED")
    dom = chromium(f"{ui['ui']}/runs/flow-run/{failed['id']}", ui["shots"] / "2-failed-stage-run.png")
    assert _has_retry_button(dom) and "sbt-stage" in dom
    dom = chromium(f"{ui['ui']}/runs/flow-run/{ui['runs']['per_stage']['id']}?tab=Subflow+Runs",
                   ui["shots"] / "2-failed-per-stage-pipeline.png")
    assert "sft-op" in dom and "sft-bt" in dom


def test_the_pipeline_run_shows_each_stage_cached_or_completed(ui):
    runs = _post(ui["api"], "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 50})
    pipeline = next(r for r in runs if r["state"]["type"] == "COMPLETED" and r["parent_task_run_id"] is None)
    dom = chromium(f"{ui['ui']}/runs/flow-run/{pipeline['id']}?tab=Task+Runs", ui["shots"] / "2-pipeline-run.png")
    assert "sft-op" in dom and "Cached" in dom


def _artifact(ui, key: str) -> str:
    return _post(ui["api"], "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "limit": 5})[0]["id"]


def test_the_report_artifact_shows_its_plots(ui):
    dom = chromium(f"{ui['ui']}/artifacts/artifact/{_artifact(ui, 'sbt-report')}", ui["shots"] / "3-report.png",
                   height=3600)
    assert dom.count('src="data:image/png;base64,') >= 2, "the report's plots are not in the rendered page"


def test_the_artifacts_page_lists_the_table_and_a_progress_bar_per_stage(ui):
    dom = chromium(f"{ui['ui']}/artifacts", ui["shots"] / "4-artifacts.png")
    for key in ("sbt-report", "sbt-metrics", "progress-sft-bt", "progress-eval-sft-op"):
        assert key in dom, key
    dom = chromium(f"{ui['ui']}/artifacts/artifact/{_artifact(ui, 'sbt-metrics')}", ui["shots"] / "5-metrics.png",
                   height=1600)
    assert "new targets %" in dom and dom.index("sft_greedy") < dom.index("bt_greedy") < dom.index("ei1_greedy")
