"""Fan-out: one evaluation's shards as flow runs over a pool of workers, against the same evaluation in one process.

Everything real and in this run: a `prefect server`, a process pool with `--workers` workers (one flow run each at
a time, `CUDA_VISIBLE_DEVICES` 0..W-1, `OMP_NUM_THREADS` = cores / W), the stage deployment they run, and an
evaluation stage (`execution.mode: deployments`, `execution.shard_runs: W`) whose `--shards` shards of
`--shard-size` problems each go out as flow runs (`flows.stage_runs`). The baseline is the same stage in process
(`execution.mode: in_process`, every core to one torch). The model is a from-scratch tiny model saved untrained (it
decodes to `--max-new-tokens` on every problem, so each shard costs the same).

Prints both wall times, `ratio: X` (in process / fanned out), the shard runs' start latency (created -> running)
and the orchestration time per shard: the workers' busy time less the shards' own compute time, per shard. Checks
that the two runs wrote the same results (`io.snapshot`).

    python benchmarks/fanout.py [--workers 2] [--shards 6] [--shard-size 8] [--method sbt_b1_n8]
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

POOL, DEPLOYMENT = "sbt-bench-fan", "sbt-stage/bench"


def _config(args, mode: str):
    from sbt_core.config import load_run_config

    return load_run_config(ROOT / "configs" / "smoke.yaml", [
        f"execution.mode={mode}", "execution.cpu_deployment=null", f"execution.gpu_deployment={DEPLOYMENT}",
        f"execution.shard_runs={args.workers}", "execution.shard_retries=0",
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--method", default="sbt_b1_n8")
    args = p.parse_args()

    import torch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.register import base_job_template, create_deployment
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
    workers = []
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            t0 = time.perf_counter()
            serial = _evaluation(_config(args, "in_process"), args.method, str(tmp / "serial"), str(model_dir))
            t_serial = time.perf_counter() - t0
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                                       base_job_template=base_job_template("process", True)))
                _, dep_id, _ = create_deployment(client, {"entrypoint": "flows/pipeline.py:stage_flow", "name": "bench",
                                                          "pool": POOL, "job_variables": {}, "parameters": {},
                                                          "tags": ["sbt", "bench"]}, str(ROOT))
            env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1",
                   "OMP_NUM_THREADS": str(max(1, cores // args.workers))}
            for i in range(args.workers):
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process",
                     "--name", f"gpu-{i}", "--limit", "1"], cwd=tmp, env={**env, "CUDA_VISIBLE_DEVICES": str(i)},
                    stdout=open(tmp / f"worker-{i}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
            time.sleep(5)  # the workers up and polling: not part of the fanned-out run's time
            t0 = time.perf_counter()
            fanned = _evaluation(_config(args, "deployments"), args.method, str(tmp / "fanned"), str(model_dir))
            t_fanned = time.perf_counter() - t0
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
    finally:
        for w in workers:
            stop(w)
        stop(server)

    assert len(runs) == args.shards and all(r.state.is_completed() for r in runs), [r.state for r in runs]
    compute = io.read_json(serial["outputs"]["summary"])[args.method]["val_new"]["seconds"]
    fan_compute = io.read_json(fanned["outputs"]["summary"])[args.method]["val_new"]["seconds"]
    busy = sum((r.end_time - r.start_time).total_seconds() for r in runs)
    latency = [(r.start_time - r.created).total_seconds() for r in runs]
    same = io.snapshot(tmp / "serial" / "eval") == io.snapshot(tmp / "fanned" / "eval")
    print(f"machine: {cores} cores, torch {torch.__version__}; {args.workers} workers x {max(1, cores // args.workers)} "
          f"threads; {args.shards} shards x {args.shard_size} problems, {args.method}, {args.max_new_tokens} tokens")
    print(f"in process:  {t_serial:7.1f} s  (search compute {compute:.1f} s)")
    print(f"fanned out:  {t_fanned:7.1f} s  (search compute {fan_compute:.1f} s over the shard runs)")
    print(f"shard runs: start latency mean {sum(latency) / len(latency):.1f} s, max {max(latency):.1f} s; "
          f"orchestration per shard {(busy - fan_compute) / len(runs):.1f} s (run time less compute)")
    print(f"same results: {same}")
    print(f"ratio: {t_serial / t_fanned:.2f}")
    print(f"(at {datetime.datetime.now().isoformat(timespec='seconds')}; files in {tmp})")


if __name__ == "__main__":
    main()
