"""Ctrl-C on a real `sbt run -c smoke` with no server configured: it stops within seconds, leaves no server
behind, marks its flow run Cancelled, and the same command resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import local_server

SBT = str(Path(sys.executable).with_name("sbt"))


def _servers_on(home: Path) -> list[int]:
    """Pids of processes whose PREFECT_HOME is `home`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"PREFECT_HOME={home}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


@pytest.mark.integration
def test_ctrl_c_stops_sbt_run_in_seconds_cancels_its_flow_run_and_a_rerun_resumes(tmp_path):
    home, run_dir, log = tmp_path / "prefect", tmp_path / "run", tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    with open(log, "w") as out:  # its own session, as a terminal's foreground job: SIGINT goes to the group
        # SIGINT as a terminal delivers it: a test run in the background of a non-interactive shell (as CI may be)
        # ignores SIGINT, the child inherits that, and Python then installs no KeyboardInterrupt handler.
        p = subprocess.Popen([SBT, "run", "-c", "smoke", "--run-dir", str(run_dir)], stdout=out,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (run_dir / "sft-op").exists():  # the first SFT has begun
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(2)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    rc = p.wait(timeout=120)
    seconds = time.monotonic() - t0
    text = log.read_text()
    assert rc == 130 and seconds < 20, (rc, seconds, text[-3000:])
    assert "interrupted: 1 flow run(s) marked Cancelled" in " ".join(text.split())
    assert "Traceback" not in text and "Error logging to API" not in text
    time.sleep(1)
    assert _servers_on(home) == [], "the temporary server outlived the command"

    proc, url = local_server.start(home)
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect import get_client

        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            states = {r.name: r.state.type.value for r in client.read_flow_runs()}
        assert list(states.values()) == ["CANCELLED"], states
        again = subprocess.run([SBT, "run", "-c", "smoke", "--run-dir", str(run_dir)], capture_output=True, text=True,
                               env={**env, "PREFECT_API_URL": url}, timeout=600)
    finally:
        local_server.stop(proc)
    assert again.returncode == 0, again.stderr[-3000:]
    ran, cached = map(int, re.search(r"ran (\d+) stages, (\d+) cached", again.stderr).groups())
    assert cached >= 3 and (run_dir / "report.md").exists(), again.stderr[-2000:]  # generate and both build-datas
    # One progress display per stage, no library chatter on the terminal (SFT, GRPO and evaluation ran): it is in
    # the run's log file.
    terminal = again.stdout + again.stderr
    for chatter in ("Setting accelerator to CPU", "{'loss'", "RESUME", "Loading weights", "it/s]", "FutureWarning"):
        assert chatter not in terminal, (chatter, terminal[-3000:])
    assert "sft-bt: optimiser steps: 100% (loss " in terminal and "grpo-bt: GRPO steps: 100%" in terminal
    log_file = Path(re.search(r"log: (\S+\.log)", again.stderr).group(1))
    assert log_file.parent == run_dir / "logs" and "sft-bt: done in" in log_file.read_text()
