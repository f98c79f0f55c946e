"""The self-backtracking pipeline as Prefect flows.

    generate → build-data (D_op; D_op ∪ D_back) → SFT (both) → evaluate (both)
             → K × expert_iteration_round (search train → distill → SFT → evaluate) → report

Every stage is a task from `tasks.stages` that caches on its key (see there): rerunning a
flow after a crash, from the CLI or with the UI's Retry, skips finished stages, resumes the
one that broke and runs what follows. `expert_iteration_round` is a subflow that also runs
alone, given a model URI and a round number. Artifacts live under `run_dir`:

    data/  data-op/  data-bt/  sft-op/  sft-bt/  eval-sft-op/  eval-sft-bt/
    ei{r}/search/  ei{r}/data/  ei{r}/sft/  ei{r}/eval/  report/  report.md  metrics.json
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sbt_core import io
from sbt_core.config import ModelConfig, RunConfig
from tasks import stages
from tasks.stages import StageResult


def _call(task, *args, **kwargs) -> tuple[StageResult, bool]:
    """Run a stage task here; return its StageResult and whether it was served from cache."""
    state = task(*args, return_state=True, **kwargs)
    return state.result(), state.name == "Cached"


def _call_deployment(deployment: str, task, *args, **kwargs) -> tuple[StageResult, bool]:
    """Run a stage task as a flow run of `deployment` (the `sbt-stage` flow) and wait for it.

    Only JSON crosses: configs as dicts, StageResults as dicts. The result is read back from the
    stage's `stage.json`, so the run dir must be storage both sides see (s3://, or a shared disk).
    """
    import inspect

    from prefect.deployments import run_deployment

    params = inspect.signature(task.fn).bind(*args, **kwargs).arguments
    params = {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in params.items()}
    run = run_deployment(deployment, parameters={"task": task.name, "params": params}, timeout=None,
                         as_subflow=True)
    if not run.state.is_completed():
        raise RuntimeError(f"{params['stage_name']}: flow run {run.name} of {deployment} ended {run.state.name}")
    return io.read_json(io.join(params["out_dir"], stages.RECORD)), run.state.name == "Cached"


class _Ledger:
    """Runs stages (here, or through deployments) and notes which ran and which were cached."""

    def __init__(self, config: RunConfig):
        self.execution = config.execution
        self.rows: list[dict[str, Any]] = []

    def __call__(self, name: str, task, *args, **kwargs) -> StageResult:
        t0 = time.monotonic()
        ex = self.execution
        target = ex.gpu_deployment if task.name in stages.HEAVY else ex.cpu_deployment
        if ex.mode == "deployments" and target:
            result, cached = _call_deployment(target, task, name, *args, **kwargs)
        else:
            result, cached = _call(task, name, *args, **kwargs)
        self.rows.append({"stage": name, "cached": cached, "wall_seconds": round(time.monotonic() - t0, 3),
                          "work_seconds": 0.0 if cached else result.get("seconds", 0.0)})
        return result


@flow(name="expert-iteration-round", log_prints=True)
def expert_iteration_round(config: RunConfig, run_dir: str, round: int, model_uri: str) -> dict[str, Any]:
    """Round r: search train problems with the slow search, keep verified outputs, distill, evaluate."""
    stages.use_storage_block()
    ei = config.expert_iteration
    ledger = _Ledger(config)
    data = ledger("generate", stages.generate, config.generate, io.join(run_dir, "data"))
    base = stages.external(model_uri)
    here = io.join(run_dir, f"ei{round}")
    split = "val_new" if ei.transductive else "train"
    searched = ledger(f"ei{round}-search", stages.search, config.eval.search_config(ei.method), base, data, split,
                      ei.train_problems, io.join(here, "search"))
    distilled = ledger(f"ei{round}-distill", stages.distill, searched, io.join(here, "data"), ei.transductive)
    model = ledger(f"ei{round}-sft", stages.sft, ei.train, ModelConfig(size=None, path=model_uri), distilled,
                   io.join(here, "sft"), base)
    evaluation = ledger(f"ei{round}-evaluate", stages.evaluate, config.eval, config.eval.ei_methods, model, data,
                        io.join(here, "eval"))
    rows = io.parquet_rows(distilled["outputs"]["sft"])
    get_run_logger().info("round %d: %d verified outputs distilled from %d searched problems", round, rows,
                          min(ei.train_problems, io.parquet_rows(data["outputs"][split])))
    return {"model": model["outputs"]["model"], "model_result": model, "evaluation": evaluation,
            "distilled_rows": rows, "stages": ledger.rows}


@flow(name="sbt-pipeline", log_prints=True)
def pipeline(config: RunConfig = RunConfig(), run_dir: str = "runs/tiny") -> dict[str, Any]:
    """The whole method on Countdown, expert iteration included; writes run_dir/report.md and metrics.json."""
    logger = get_run_logger()
    stages.use_storage_block()
    t0 = time.monotonic()
    ledger = _Ledger(config)
    data = ledger("generate", stages.generate, config.generate, io.join(run_dir, "data"))
    op_cfg = config.build_data.model_copy(update={"backtrack_per_optimal": 0.0})
    data_op = ledger("build-data-op", stages.build_data, op_cfg, data, io.join(run_dir, "data-op"))
    data_bt = ledger("build-data-bt", stages.build_data, config.build_data, data, io.join(run_dir, "data-bt"))
    sft_op = ledger("sft-op", stages.sft, config.sft, config.model, data_op, io.join(run_dir, "sft-op"))
    sft_bt = ledger("sft-bt", stages.sft, config.sft, config.model, data_bt, io.join(run_dir, "sft-bt"))
    evaluations = {
        "sft": ledger("eval-sft-op", stages.evaluate, config.eval, config.eval.sft_methods, sft_op, data,
                      io.join(run_dir, "eval-sft-op")),
        "bt": ledger("eval-sft-bt", stages.evaluate, config.eval, config.eval.bt_methods, sft_bt, data,
                     io.join(run_dir, "eval-sft-bt")),
    }
    model_uri = sft_bt["outputs"]["model"]
    distilled = {}
    for r in range(1, config.expert_iteration.rounds + 1):
        out = expert_iteration_round(config, run_dir, r, model_uri)
        ledger.rows += [row for row in out["stages"] if row["stage"] != "generate"]
        model_uri, evaluations[f"ei{r}"], distilled[r] = out["model"], out["evaluation"], out["distilled_rows"]
    notes = [
        f"preset `{config.name}`; {config.eval.limit or 'all'} problems per split; config hash "
        f"{io.config_hash(config.model_dump(mode='json'))}; code {io.code_version()}",
        "Self-backtracking rows never consult the verifier: the model's mean log-probability picks the answer.",
        *[f"expert-iteration round {r}: {n} verified outputs distilled" for r, n in distilled.items()],
    ]
    report = ledger("report", stages.report, config.name, evaluations, io.join(run_dir, "report"),
                    config.expert_iteration.method, notes)
    rows = io.read_json(report["outputs"]["metrics"])
    _publish(rows, io.read_bytes(report["outputs"]["report"]).decode())
    wall = time.monotonic() - t0
    ran = [r["stage"] for r in ledger.rows if not r["cached"]]
    work = sum(r["work_seconds"] for r in ledger.rows)
    summary = {
        "run_dir": str(run_dir),
        "report": report["outputs"]["report_top"],
        "metrics": report["outputs"]["metrics_top"],
        "stages": ledger.rows,
        "ran": ran,
        "cached": [r["stage"] for r in ledger.rows if r["cached"]],
        "wall_seconds": round(wall, 2),
        "stage_work_seconds": round(work, 2),
        "orchestration_seconds_per_stage": round((wall - work) / max(len(ledger.rows), 1), 3),
    }
    io.write_json(summary, io.join(run_dir, "run.json"))
    if ran:
        logger.info("pipeline: ran %d stages (%s), %d cached; %.1f s", len(ran), ", ".join(ran),
                    len(summary["cached"]), wall)
    else:
        logger.info("pipeline: nothing to do, all %d stages cached; report at %s", len(ledger.rows),
                    summary["report"])
    return summary


def _publish(rows: dict[str, dict], report_md: str) -> None:
    """The report as Prefect artifacts: a table and the markdown."""
    table = [
        {"row": k, "accuracy_seen": r["accuracy_seen"], "accuracy_new": r["accuracy_new"],
         "tokens_per_problem": round(r["tokens_per_problem"], 1), "false_claim_rate_new": r["false_claim_rate_new"],
         "verifier_mode": r["verifier_mode"]}
        for k, r in rows.items()
    ]
    create_table_artifact(table, key="sbt-metrics", description="Accuracy per method row (strict verifier)")
    create_markdown_artifact(report_md, key="sbt-report", description="The run's report (Table 1 shape)")


@flow(name="sbt-stage")
def stage_flow(task: str, params: dict[str, Any]):
    """One stage as its own flow run: what `execution.mode: deployments` launches on a work pool.

    `task` names a task of `tasks.stages` (generate, build-data, sft, evaluate, search, distill,
    report); `params` are its arguments as JSON. The flow run ends in the task's own state
    (`Cached` when its outputs were already there), so a failed one can be retried from the UI.
    """
    if task not in stages.TASKS:
        raise ValueError(f"unknown stage task {task!r}; choose from {sorted(stages.TASKS)}")
    return stages.TASKS[task](**stages.coerce_params(task, params), return_state=True)
