"""Fan-out: one evaluation's shards as flow runs over a pool of 1 and of `--workers` workers, and in one process.

Everything real and in this run: a `prefect server`, a process pool, the stage deployment its workers run (one
flow run each at a time, `CUDA_VISIBLE_DEVICES` 0..W-1, `--threads` torch threads each, default 1), and an
evaluation stage (`execution.mode: deployments`, `execution.shard_runs: W`) whose `--shards` shards of
`--shard-size` problems each go out as flow runs (`flows.stage_runs`), `--shards-per-run` to a run
(`execution.shards_per_run`; default shards / workers, one run per worker). The baseline is the same fan-out over
one worker; the same stage in process (`execution.mode: in_process`, every core to one torch) is printed beside
it. The model is a from-scratch tiny model saved untrained (it decodes to `--max-new-tokens` on every problem, so
each shard costs the same).

Prints the wall times, `ratio: X` (1 worker / W workers), the runs' start latency (created -> running) and the
orchestration time per shard: the runs' latency and run time less the shards' own compute time, per shard.
Checks that the runs wrote the same results: the same bytes (`io.snapshot`) over 1 and W workers; against the
in-process run, whose torch ran at another thread count, the same outputs and verdicts with log-prob scores
equal up to float rounding (fp32 sums in another order).

    python benchmarks/fanout.py [--workers 2] [--threads 1] [--shards 8] [--shard-size 32] [--shards-per-run K]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POOL = "sbt-bench-fan"


def _config(args, mode: str, deployment: str = "none/none"):
    from sbt_core.config import load_run_config

    return load_run_config(ROOT / "configs" / "smoke.yaml", [
        f"execution.mode={mode}", "execution.cpu_deployment=null", f"execution.gpu_deployment={deployment}",
        f"execution.shard_runs={args.workers}", "execution.shard_retries=0",
        f"execution.shards_per_run={args.shards_per_run}",
        f"eval.shard_size={args.shard_size}", f"eval.limit={args.shards * args.shard_size}",
        f"eval.max_new_tokens={args.max_new_tokens}", "eval.splits=[val_new]",
        f"generate.num_val_new={args.shards * args.shard_size}"])


def _evaluation(config, method: str, run_dir: str, model_dir: str) -> dict:
    """The evaluate stage of `config` on the model, through the ledger (as the pipeline runs it); its summary."""
    from prefect import flow

    from flows.ledger import Ledger
    from sbt_core import io
    from tasks import stages

    @flow(name="sbt-bench-fanout")
    def bench(config, run_dir: str, model_dir: str):
        ledger = Ledger(config)
        data = ledger("generate", stages.generate, cfg=config.generate, out_dir=io.join(run_dir, "data"))
        return ledger("eval-bench", stages.evaluate, cfg=config.eval, methods=[method],
                      model=stages.external(model_dir), data=data, out_dir=io.join(run_dir, "eval"))

    return bench(config, run_dir, model_dir)


def _compare(a: Path, b: Path, method: str) -> tuple[bool, bool, float]:
    """(same snapshot, same outputs and verdicts, the largest difference of a candidate's score or value)."""
    import pyarrow.parquet as pq

    from sbt_core import io

    x, y = (pq.read_table(d / method / "val_new" / "results.parquet").drop_columns(["seconds"]).to_pylist()
            for d in (a, b))
    strip = lambda rows: [{**r, "candidates": [c["response"] for c in r["candidates"]]} for r in rows]  # noqa: E731
    drift = max((abs(c[k] - d[k]) for r, s in zip(x, y) for c, d in zip(r["candidates"], s["candidates"])
                 for k in ("score", "value")), default=0.0)
    return io.snapshot(a) == io.snapshot(b), strip(x) == strip(y), drift


def _fanned(args, tmp: Path, api: str, workers: int, model_dir: Path) -> tuple[float, dict, list]:
    """The evaluation fanned out over `workers` process workers of a deployment of its own (each one flow run at a
    time, `--threads` torch threads); (wall seconds, its StageResult, its flow runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from deployments.register import create_deployment
    from flows.local_server import stop

    name = f"w{workers}"
    with get_client(sync_client=True) as client:
        _, dep_id, _ = create_deployment(client, {"entrypoint": "flows/pipeline.py:stage_flow", "name": name,
                                                  "pool": POOL, "job_variables": {}, "parameters": {},
                                                  "tags": ["sbt", "bench"]}, str(ROOT))
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "OMP_NUM_THREADS": str(args.threads)}
    procs = []
    try:
        for i in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process",
                 "--name", f"{name}-gpu-{i}", "--limit", "1"], cwd=tmp, env={**env, "CUDA_VISIBLE_DEVICES": str(i)},
                stdout=open(tmp / f"{name}-worker-{i}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(5)  # the workers up and polling: not part of the fanned-out run's time
        t0 = time.perf_counter()
        result = _evaluation(_config(args, "deployments", f"sbt-stage/{name}"), args.method, str(tmp / name),
                             str(model_dir))
        wall = time.perf_counter() - t0
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
    finally:
        for w in procs:
            stop(w)
    assert len(runs) == -(-args.shards // args.shards_per_run) and all(r.state.is_completed() for r in runs), \
        [r.state for r in runs]
    return wall, result, runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--shards-per-run", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--method", default="sbt_b1_n8")
    args = p.parse_args()
    args.shards_per_run = args.shards_per_run or -(-args.shards // args.workers)

    import torch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.register import base_job_template
    from flows.local_server import start, stop
    from sbt_core import io
    from sbt_core.models import build_tiny, build_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="sbt-bench-fanout-"))
    tok = build_tokenizer()
    model_dir = tmp / "model"
    build_tiny("1m", tok, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cores = os.cpu_count() or 1
    (tmp / "prefect").mkdir()
    server, api = start(tmp / "prefect", scheduler=False)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            t0 = time.perf_counter()
            serial = _evaluation(_config(args, "in_process"), args.method, str(tmp / "serial"), str(model_dir))
            t_serial = time.perf_counter() - t0
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                                       base_job_template=base_job_template("process", True)))
            t_one, one, _ = _fanned(args, tmp, api, 1, model_dir)
            t_many, many, runs = _fanned(args, tmp, api, args.workers, model_dir)
    finally:
        stop(server)

    seconds = lambda result: io.read_json(result["outputs"]["summary"])[args.method]["val_new"]["seconds"]  # noqa: E731
    busy = sum((r.end_time - r.created).total_seconds() for r in runs)
    latency = [(r.start_time - r.created).total_seconds() for r in runs]
    same, outputs, _ = _compare(tmp / "w1" / "eval", tmp / f"w{args.workers}" / "eval", args.method)
    _, serial_outputs, drift = _compare(tmp / "serial" / "eval", tmp / f"w{args.workers}" / "eval", args.method)
    print(f"machine: {cores} cores, torch {torch.__version__}; {args.shards} shards x {args.shard_size} problems, "
          f"{args.method}, {args.max_new_tokens} tokens; {args.shards_per_run} shard(s) per run ({len(runs)} runs)")
    print(f"in process ({torch.get_num_threads()} threads): {t_serial:7.1f} s  (search compute {seconds(serial):.1f} s)")
    print(f"1 worker x {args.threads} thread(s):  {t_one:7.1f} s  (search compute {seconds(one):.1f} s)")
    print(f"{args.workers} workers x {args.threads} thread(s): {t_many:7.1f} s  (search compute {seconds(many):.1f} s "
          "over the runs)")
    print(f"runs: start latency mean {sum(latency) / len(latency):.1f} s, max {max(latency):.1f} s; "
          f"orchestration per shard {(busy - seconds(many)) / args.shards:.2f} s (latency and run time less compute)")
    print(f"1 worker vs {args.workers}: same bytes {same}, same outputs and verdicts {outputs}")
    print(f"in process vs {args.workers} workers: same outputs and verdicts {serial_outputs}, largest score difference "
          f"{drift:.1e} (torch at another thread count sums in another order)")
    print(f"ratio: {t_one / t_many:.2f}  (1 worker / {args.workers} workers; in process / {args.workers} workers "
          f"{t_serial / t_many:.2f})")
    print(f"(at {datetime.datetime.now().isoformat(timespec='seconds')}; files in {tmp})")


if __name__ == "__main__":
    main()
