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
import urllib.request
from pathlib import Path

import pytest

from flows.local_server import start as start_prefect_server
from flows.local_server import stop

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _post(api: str, path: str, body: dict):
    req = urllib.request.Request(f"{api}{path}", method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def chromium(url: str, png: Path) -> str:
    """Render `url` (JavaScript included), save a screenshot, return the DOM."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1440,1100",
            "--virtual-time-budget=15000"]
    subprocess.run([*args, f"--screenshot={png}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    if not CHROMIUM:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    home = tmp_path_factory.mktemp("prefect-ui")
    proc, api = start_prefect_server(home, ui=True)
    run_dir = home / "run"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "-c", "smoke", "--run-dir", str(run_dir)]
    failed = subprocess.run(cmd, cwd=ROOT, env={**env, "SBT_FAIL_STAGES": "sft-bt"}, capture_output=True, timeout=600)
    assert failed.returncode != 0
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    shots = Path(os.environ.get("SBT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    yield {"api": api, "ui": api.removesuffix("/api"), "shots": shots}
    stop(proc)


def test_flow_runs_show_the_failed_and_the_finished_pipeline(ui):
    dom = chromium(f"{ui['ui']}/runs", ui["shots"] / "1-runs.png")
    assert "sbt-pipeline" in dom and "Failed" in dom and "Completed" in dom


def test_the_pipeline_run_shows_each_stage_cached_or_completed(ui):
    runs = _post(ui["api"], "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 50})
    pipeline = next(r for r in runs if r["state"]["type"] == "COMPLETED" and r["parent_task_run_id"] is None)
    dom = chromium(f"{ui['ui']}/runs/flow-run/{pipeline['id']}?tab=Task+Runs", ui["shots"] / "2-pipeline-run.png")
    assert "sft-op" in dom and "Cached" in dom


def test_the_report_artifact_shows_its_plots(ui):
    arts = _post(ui["api"], "/artifacts/filter", {"artifacts": {"key": {"any_": ["sbt-report"]}}, "limit": 5})
    dom = chromium(f"{ui['ui']}/artifacts/artifact/{arts[0]['id']}", ui["shots"] / "3-report.png")
    assert dom.count("data:image/png;base64,") >= 2, "the report's plots are not in the rendered page"


def test_the_artifacts_page_lists_the_table_and_a_progress_bar_per_stage(ui):
    dom = chromium(f"{ui['ui']}/artifacts", ui["shots"] / "4-artifacts.png")
    for key in ("sbt-report", "sbt-metrics", "progress-sft-bt", "progress-eval-sft-op"):
        assert key in dom, key
    chromium(f"{ui['ui']}/artifacts/key/sbt-metrics", ui["shots"] / "5-metrics.png")
