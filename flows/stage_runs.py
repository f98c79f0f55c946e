"""Stages as their own flow runs (`execution.mode: deployments`): launch, reuse, retry, resume.

The pipeline launches each stage as a flow run of `sbt-stage/gpu` or `sbt-stage/cpu`, named after
the stage (`sft-bt`, `ei2-search`) and keyed by `<root flow run id>/<stage>@<out_dir>` (Prefect's
idempotency key; the root is the outermost flow run, the pipeline or a study, since a nested
subflow such as an expert-iteration round gets a new id when its parent is retried). So one
pipeline run owns exactly one flow run per stage, across its retries:

- A retried pipeline run finds its finished stage runs by that key and reuses them (no new run),
  and sends a failed one back to `AwaitingRetry`, the same transition as the UI's Retry button.
- A stage run retried on its own (the Retry button on the stage's run page) re-enters its parent
  when it completes: `resume_parent`, the stage flow's `on_completion` hook, puts the failed
  root run back to `AwaitingRetry`; its worker picks it up, the finished stages are reused,
  the retried one is now complete, and the pipeline goes on with the stages after it.

Each stage run ends `Completed`, or `Completed` named `Cached` when its `stage.json` already held
the outputs (see `tasks.stages`).

With `execution.shard_runs: N` a search, an evaluation, a study-eval or an on-policy harvest fans out instead
(`shard_runner`, `tasks.stages.FANS_OUT`): the stage
runs in the pipeline's own run (its record, the gather and the summary; no GPU), and each of its
missing shards is a flow run of the GPU deployment named `<stage>/<unit>` (`eval-sft-bt/greedy/
val_new/shard-00001`) and keyed by `<root run id>/<stage key>/<unit>`, at most N at once, so the pool's
workers take them together. A failed or crashed shard is retried alone, as a new flow run keyed
`<key>/retry-<n>` (`execution.shard_retries` times, then the stage fails); shards already written are
never sent again, and a retried pipeline run finds its shard runs by their keys (waiting for one still
running, sending a new attempt of one that failed). With `execution.shards_per_run: k` the missing shards
go k to a run (`<stage>/<first unit>+<k-1>`), which writes each as it finishes it; a retried pipeline run
packs what is still missing anew.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.states import Scheduled

from sbt_core import io
from sbt_core.search.common import group
from tasks import stages

POLL_SECONDS = 1.0
RESUMABLE = (StateType.FAILED, StateType.CRASHED)


def _awaiting_retry():
    """The state the UI's Retry button sets (ui-v2 RetryFlowRunDialog): scheduled now, named AwaitingRetry."""
    return Scheduled(name="AwaitingRetry")


def call(deployment: str, task, *args, **kwargs) -> tuple[stages.StageResult, bool, bool]:
    """Run a stage task as a flow run of `deployment` and wait for it; return (StageResult, cached, reused).

    Only JSON crosses: configs as dicts, StageResults as dicts. The result is read back from the
    stage's `stage.json`, so the run dir must be storage both sides see (s3://, or a shared disk).
    `cached`: the stage's run ended `Cached` (its outputs were there before it started).
    `reused`: the run had finished before this attempt of the pipeline (an earlier attempt, or a
    retry of the stage run itself), so this attempt waited for nothing.
    """
    from prefect.deployments import run_deployment

    params = inspect.signature(task.fn).bind(*args, **kwargs).arguments
    params = {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in params.items()}
    stage = params["stage_name"]
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        key = f"{_root(client, FlowRunContext.get().flow_run).id}/{stage}@{params['out_dir']}"
        run = _find(client, deployment, key)
        finished_before = run is not None and run.state.is_completed()
        if run is None:
            run = run_deployment(deployment, parameters={"task": task.name, "params": params}, timeout=0,
                                 flow_run_name=stage, idempotency_key=key, as_subflow=True,
                                 job_variables=_gpus(client, deployment, task.name, params))
            logger.info("%s: flow run %s of %s", stage, run.id, deployment)
        elif run.state.type in (*RESUMABLE, StateType.CANCELLED):
            logger.info("%s: retrying its flow run %s (%s in an earlier attempt)", stage, run.id, run.state.name)
            client.set_flow_run_state(run.id, _awaiting_retry(), force=True)
        else:
            logger.info("%s: reusing its flow run %s (%s)", stage, run.id, run.state.name)
        run = _wait(client, run.id)
    if not run.state.is_completed():
        raise RuntimeError(f"{stage}: flow run {run.name} ({run.id}) of {deployment} ended {run.state.name}; "
                           "retry that run (or this pipeline run) once the cause is fixed")
    return io.read_json(io.join(params["out_dir"], stages.RECORD)), run.state.name == "Cached", finished_before


def _gpus(client, deployment: str, task: str, params: dict) -> dict | None:
    """The job variables of a stage run that wants more than the pool's one GPU a run: an SFT of `num_processes`
    ranks (`deployments.register.gpu_job_variables`); None for every other stage."""
    from deployments.register import gpu_job_variables

    gpus = (params.get("cfg") or {}).get("num_processes", 1) if task == "sft" else 1
    if gpus <= 1:
        return None
    pool = client.read_work_pool(client.read_deployment_by_name(deployment).work_pool_name)
    return gpu_job_variables(pool.type, gpus) or None


def shard_runner(deployment: str, max_runs: int, retries: int, per_run: int = 1):
    """`make(stage_name)` -> a FanOut (`sbt_core.search.common`) sending units to `deployment`, `per_run` to a
    flow run (see the module docstring); for `tasks.stages.fanning_out`."""

    def make(stage: str):
        return lambda units: _fan_out(deployment, stage, group(units, per_run), max_runs, retries)

    return make


def _fan_out(deployment: str, stage: str, units: list, max_runs: int, retries: int) -> None:
    """Each unit a flow run of `deployment`, at most `max_runs` at once; a failed or crashed run is retried alone as a
    new flow run (`/retry-<n>` after its key): a worker may still report the old run Crashed seconds after its process
    died, which would overwrite a retry made by resetting that run's state."""
    from prefect.deployments import run_deployment

    if not units:
        return
    logger, key, t0 = get_run_logger(), stages.current_key(), time.monotonic()
    pending, running, failures = list(units), {}, Counter()
    with get_client(sync_client=True) as client:
        root = _root(client, FlowRunContext.get().flow_run).id
        logger.info("%s: %d shard(s) to %s, at most %d at once", stage, len(units), deployment, max_runs)
        while pending or running:
            while pending and len(running) < max_runs:
                unit = pending.pop(0)
                name, idem = f"{stage}/{unit.name}", f"{root}/{key}/{unit.name}"
                attempt, run = _last_attempt(client, deployment, idem)
                if run is not None and not run.state.is_final():
                    logger.info("%s: waiting for its flow run %s (%s, from an earlier attempt)", name, run.id,
                                run.state.name)
                else:  # none yet, or the last one is over and the shard is still missing
                    params = {"task": stages.shard.name,
                              "params": {"name": name, "entry": unit.entry, "kwargs": unit.kwargs}}
                    run = run_deployment(deployment, parameters=params, timeout=0, flow_run_name=name,
                                         idempotency_key=_attempt_key(idem, attempt + 1), as_subflow=True)
                running[run.id] = name, unit
            time.sleep(POLL_SECONDS)
            for run_id, (name, unit) in list(running.items()):
                run = client.read_flow_run(run_id)
                if not (run.state and run.state.is_final()):
                    continue
                del running[run_id]
                if run.state.is_completed():
                    continue
                failures[name] += 1
                if failures[name] > retries:
                    raise RuntimeError(f"{name}: flow run {run.id} of {deployment} ended {run.state.name} "
                                       f"({failures[name]} attempt(s) failed); retry this pipeline run once the cause "
                                       "is fixed: the shards already written are kept")
                logger.warning("%s: flow run %s ended %s; retrying it alone (%d of %d)", name, run.id,
                               run.state.name, failures[name], retries)
                pending.insert(0, unit)
    logger.info("%s: %d shard run(s) done in %.1f s", stage, len(units), time.monotonic() - t0)


def _attempt_key(idem: str, attempt: int) -> str:
    """The idempotency key of a shard's attempt: `idem` for the first (attempt 0), then `idem/retry-<attempt>`."""
    return idem if attempt == 0 else f"{idem}/retry-{attempt}"


def _last_attempt(client, deployment: str, idem: str) -> tuple[int, FlowRun | None]:
    """(n, run): the last attempt's number and flow run among the runs keyed `idem`; (-1, None) when there is none."""
    attempt, last = -1, None
    while (run := _find(client, deployment, _attempt_key(idem, attempt + 1))) is not None:
        attempt, last = attempt + 1, run
    return attempt, last


def _root(client, flow_run: FlowRun) -> FlowRun:
    """The outermost flow run above `flow_run` (itself when it has no parent)."""
    while flow_run.parent_task_run_id:
        flow_run = client.read_flow_run(client.read_task_run(flow_run.parent_task_run_id).flow_run_id)
    return flow_run


def _find(client, deployment: str, key: str) -> FlowRun | None:
    dep = client.read_deployment_by_name(deployment)
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), limit=1)
    return runs[0] if runs else None


def _wait(client, flow_run_id) -> FlowRun:
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(POLL_SECONDS)


def resume_parent(flow, flow_run: FlowRun, state) -> None:
    """`on_completion` of a stage run: a stage retried on its own re-enters its failed pipeline run.

    The root run (the pipeline, or a study around it) is sent back to AwaitingRetry only when it
    ended Failed or Crashed and came from a deployment, so that a worker takes it up again; a
    running root is already waiting for this run.
    """
    if not flow_run.parent_task_run_id:
        return
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        root = _root(client, flow_run)
        if root.state.type not in RESUMABLE:
            return
        if not root.deployment_id:
            logger.info("pipeline run %s is not from a deployment; rerun it (`sbt run`) to go on", root.name)
            return
        client.set_flow_run_state(root.id, _awaiting_retry(), force=True)
        logger.info("stage %s completed: pipeline run %s (%s) sent back to AwaitingRetry to go on",
                    flow_run.name, root.name, root.state.name)
