"""A local `prefect server` process for tests and drills (`tests/conftest.py`, `scripts/kill_drill.py`):
one server for many runs saves the ~10 s each `sbt run` would spend starting a temporary one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start(home, ui: bool = False, scheduler_loop_seconds: float = 2, scheduled_runs: int = 3, scheduler: bool = True):
    """A real `prefect server` process with its home in `home`; returns (process, API URL).

    Its scheduler loops every `scheduler_loop_seconds` (Prefect's default is 60) so a test can
    wait for it to create runs, and creates at most `scheduled_runs` ahead per deployment (the
    default, 100, fills SQLite with runs of a short test interval and makes the server answer 503); with
    `scheduler=False` it creates none (a temporary server for one command, as `sbt run` starts).
    The server has its own process group: a Ctrl-C at the terminal stops the command, not the server it reports to.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": str(ui).lower(), "PREFECT_API_URL": "",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # the UI's default is port 4200
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(scheduler_loop_seconds),
           "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": str(scheduled_runs),
           "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": str(min(3, scheduled_runs)),
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": str(scheduler).lower()}
    log = open(Path(home) / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(Path(home) / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    except BaseException:  # a Ctrl-C while it starts leaves no server behind (it is in its own process group)
        stop(proc)
        raise


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
