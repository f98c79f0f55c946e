"""Kill drill: SIGKILL the pipeline inside each stage in turn, rerun, and compare every artifact.

    python scripts/kill_drill.py [--trials 20] [--seed 0] [--config smoke] [--workdir DIR] [--stages grpo-bt,...]

One uninterrupted run of the preset is the reference. Trial t picks stage STAGES[t % 16] (or the
t-th of `--stages`, in turn) and a random moment inside it (uniform over the time that stage took
in the reference run), starts
`sbt run` in a fresh run dir, waits until the stage's `stage.json` says `running`, sleeps that
long, kills the whole process group with SIGKILL, reruns to completion, and compares the
content hash of every artifact with the reference (`sbt_core.io.snapshot`: wall-clock fields
left out). A kill that lands after the stage finished (the shortest stages take ~0.1 s) still
checks its rerun, then the trial tries again with a fifth of the delay, up to 3 times (a stage
with no work, as the smoke preset's round SFT when nothing was distilled, is never hit). All
runs report to one local `prefect server` started here.

The last line is `trials: N, stages hit: S, mismatches: M` (S: distinct stages a kill landed in).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.local_server import start, stop  # noqa: E402
from sbt_core import io  # noqa: E402

ATTEMPTS = 3  # per trial, while the kill lands after the stage finished
# (stage, its folder under the run dir), in the pipeline's order
STAGES = [("generate", "data"), ("build-data-op", "data-op"), ("build-data-bt", "data-bt"), ("sft-op", "sft-op"),
          ("sft-bt", "sft-bt"), ("eval-sft-op", "eval-sft-op"), ("eval-sft-bt", "eval-sft-bt"),
          ("passk-bt", "passk-bt"), ("grpo-bt", "grpo-bt"), ("passk-grpo-bt", "passk-grpo-bt"),
          ("eval-grpo-bt", "eval-grpo-bt"), ("ei1-search", "ei1/search"), ("ei1-distill", "ei1/data"), ("ei1-sft", "ei1/sft"),
          ("ei1-evaluate", "ei1/eval"), ("report", "report")]


def sbt_run(config: str, run_dir: Path, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "-c", config, "--run-dir", str(run_dir)],
                            cwd=ROOT, env=env, start_new_session=True, **popen)


def finish(config: str, run_dir: Path, env: dict) -> None:
    proc = sbt_run(config, run_dir, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"sbt run in {run_dir} failed:\n{err[-3000:]}")


def status(record: Path) -> str | None:
    try:
        return json.loads(record.read_text()).get("status")
    except (OSError, ValueError):
        return None


def trial(config: str, run_dir: Path, env: dict, stage_dir: str, delay: float) -> bool:
    """One killed run, then a rerun to completion; returns whether the kill landed inside the stage."""
    record = run_dir / stage_dir / "stage.json"
    proc = sbt_run(config, run_dir, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while status(record) not in ("running", "done") and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the run had already ended
            pass
        proc.wait()
    hit = status(record) == "running"
    finish(config, run_dir, env)
    return hit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="smoke", help="preset name or YAML path (one expert-iteration round)")
    ap.add_argument("--workdir", type=Path, default=None, help="where run dirs go (default: a temporary folder)")
    ap.add_argument("--stages", default=None, help="comma-separated stage names to hit (default: all, in turn)")
    args = ap.parse_args(argv)
    targets = [s for s in STAGES if args.stages is None or s[0] in args.stages.split(",")]
    if not targets:
        ap.error(f"--stages names none of {[s for s, _ in STAGES]}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sbt-kill-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "prefect").mkdir(exist_ok=True)
    server, api = start(work / "prefect")
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "SBT_CACHE": str(work / "cache")}
    rng = random.Random(args.seed)
    hits, mismatches = set(), 0
    try:
        t0 = time.monotonic()
        finish(args.config, work / "reference", env)
        reference = io.snapshot(work / "reference")
        took = {r["stage"]: r["work_seconds"] for r in json.loads((work / "reference" / "run.json").read_text())["stages"]}
        print(f"reference: {len(reference)} artifacts, {time.monotonic() - t0:.0f} s", flush=True)
        for t in range(args.trials):
            stage, stage_dir = targets[t % len(targets)]
            delay = rng.uniform(0, took[stage])
            for attempt in range(ATTEMPTS):  # a kill that came too late for a short stage: again, sooner
                t1 = time.monotonic()
                run_dir = work / f"trial-{t:02d}-{attempt}"
                hit = trial(args.config, run_dir, env, stage_dir, delay)
                got = io.snapshot(run_dir)
                diff = sorted(k for k in reference.keys() | got.keys() if reference.get(k) != got.get(k))
                mismatches += bool(diff)
                print(f"trial {t}: kill {delay:.3f} s into {stage} ({'inside' if hit else 'after it finished'}); "
                      f"rerun {'matches' if not diff else 'DIFFERS in ' + ', '.join(diff[:5])}; "
                      f"{time.monotonic() - t1:.0f} s", flush=True)
                if hit:
                    hits.add(stage)
                    break
                delay *= 0.2
    finally:
        stop(server)
    print(f"trials: {args.trials}, stages hit: {len(hits)}, mismatches: {mismatches}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
