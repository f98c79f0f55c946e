"""The one way flows run stages: here or through deployments, noting which ran, which were cached, and
what was superseded; or, when planning (`sbt run --dry-run`, `sbt status`), running nothing at all.

A flow calls `ledger(name, task, **params)` for each stage instance, and `ledger.together({...})` for
independent ones (in deployments mode submitted at once, so that several workers take them). Planning
goes through the same flow code: each call returns the stage's record if it is cached, or a result with
its new key and no outputs if it would run, so the stages after it see a changed input and say so.
Subflows are called through `ledger.subflow`, which, when planning, calls the flow's function without a
flow run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import inspect
import time
from typing import Any, Iterator

from flows import stage_runs
from sbt_core import io
from tasks import stages
from tasks.stages import StageResult

_planning: contextvars.ContextVar[bool] = contextvars.ContextVar("sbt_planning", default=False)


@contextlib.contextmanager
def planning() -> Iterator[None]:
    """Flows called inside run no stage: each ledger call says what it would do, and why."""
    token = _planning.set(True)
    try:
        yield
    finally:
        _planning.reset(token)
        stages.PLANNED.clear()


def is_planning() -> bool:
    return _planning.get()


class _Pending(dict):
    """The outputs of a stage that would run: a URI under its folder for any name asked (nothing exists yet)."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir

    def __missing__(self, name: str) -> str:
        return io.join(self.out_dir, name)


class Ledger:
    """Runs stages (here, or through deployments) and notes which ran and which were cached."""

    def __init__(self, config: Any):
        self.execution = config.execution
        self.planning = is_planning()
        self.rows: list[dict[str, Any]] = []

    def __call__(self, name: str, task, **params) -> StageResult:
        """Run stage instance `name` of `task` with its parameters by keyword (the declaration's names)."""
        if self.planning:
            return self._plan(name, task, **params)
        result, row = self._run(name, task, params)
        self.rows.append(row)
        return result

    def together(self, calls: dict[Any, tuple[str, Any, dict[str, Any]]]) -> dict[Any, StageResult]:
        """Independent stages, `{key: (name, task, params)}` -> `{key: result}`.

        In deployments mode, when every one of them is its own flow run (`stage_runs.call`), they are submitted
        at once and awaited together, so the pool's workers run them side by side; when one fails the others
        still finish, and then the first failure (in the order of `calls`) is raised. Otherwise they run one
        after another, as calls of the ledger. The rows keep the order of `calls` either way."""
        if self.planning or len(calls) < 2 or not all(self._route(task) == "run" for _, task, _ in calls.values()):
            return {key: self(name, task, **params) for key, (name, task, params) in calls.items()}
        with concurrent.futures.ThreadPoolExecutor(len(calls), thread_name_prefix="sbt-stage") as pool:
            futures = {key: pool.submit(contextvars.copy_context().run, self._run, name, task, params)
                       for key, (name, task, params) in calls.items()}
        results, failure = {}, None
        for key, future in futures.items():
            if future.exception() is not None:
                failure = failure or future.exception()
                continue
            results[key], row = future.result()
            self.rows.append(row)
        if failure is not None:
            raise failure
        return results

    def _route(self, task) -> str:
        """How a stage of `task` runs: "fan-out" (here, its shards on the GPU deployment), "run" (its own flow run
        of a deployment, `stage_runs.call`) or "here" (a task run in this process)."""
        ex = self.execution
        if ex.mode != "deployments":
            return "here"
        if ex.shard_runs and task.name in stages.FANS_OUT:
            return "fan-out"
        return "run" if (ex.gpu_deployment if task.name in stages.HEAVY else ex.cpu_deployment) else "here"

    def _run(self, name: str, task, params: dict[str, Any]) -> tuple[StageResult, dict[str, Any]]:
        t0 = time.monotonic()
        ex, route = self.execution, self._route(task)
        if route == "fan-out":  # the stage here, holding no GPU; its shards on the GPU deployment
            with stages.fanning_out(stage_runs.shard_runner(ex.gpu_deployment, ex.shard_runs, ex.shard_retries,
                                                                   ex.shards_per_run)):
                state = task(name, return_state=True, **params)
            result, cached, reused = state.result(), state.name == "Cached", False
        elif route == "run":
            target = ex.gpu_deployment if task.name in stages.HEAVY else ex.cpu_deployment
            result, cached, reused = stage_runs.call(target, task, name, **params)
        else:
            state = task(name, return_state=True, **params)
            # A task run in this process is never reused from an earlier attempt (see `stage_runs.call`).
            result, cached, reused = state.result(), state.name == "Cached", False
        moved = result.get("superseded", []) if not reused else []
        row = {"stage": name, "cached": cached, "wall_seconds": round(time.monotonic() - t0, 3),
               "work_seconds": 0.0 if cached or reused else result.get("seconds", 0.0),
               **({"reused_run": True} if reused else {}), **({"superseded": moved} if moved else {})}
        return result, row

    def _plan(self, name: str, task, **given) -> StageResult:
        bound = inspect.signature(task.fn).bind(name, **given)
        bound.apply_defaults()
        params = dict(bound.arguments)
        params.pop("stage_name")
        result = stages.plan(stages.STAGES[task.name], name, params)
        if result["plan"] not in ("cached", "restore"):
            result = {**result, "outputs": _Pending(result["dir"])}
        stages.PLANNED[str(result["dir"])] = result
        self.rows.append({"stage": name, "plan": result["plan"], "why": result["why"]})
        return result

    def subflow(self, flow, *args, **kwargs) -> Any:
        """Call a subflow; when planning, its function alone (no flow run), with this ledger's planning on."""
        return flow.fn(*args, **kwargs) if self.planning else flow(*args, **kwargs)

    def merge(self, rows: list[dict[str, Any]], skip: tuple[str, ...] = ("generate",)) -> None:
        """Add a subflow's rows (less the stages it repeats from this flow, by default `generate`)."""
        self.rows += [row for row in rows if row["stage"] not in skip]

    def summary(self) -> dict[str, Any]:
        """ran / cached / superseded over the rows (or, when planning, the plan)."""
        if self.planning:
            return {"plan": self.rows, "would_run": [r["stage"] for r in self.rows if r["plan"] in ("run", "resume")]}
        return {"ran": [r["stage"] for r in self.rows if not r["cached"]],
                "cached": [r["stage"] for r in self.rows if r["cached"]],
                "superseded": [m for r in self.rows for m in r.get("superseded", [])]}
