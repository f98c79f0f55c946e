"""The self-backtracking pipeline as Prefect flows, for any domain and any set of models.

    generate → per model of `config.models`: build-data (its recipe) → SFT → evaluate (its methods)
             → per model of `grpo.models`: grpo_round (pass@k → GRPO → pass@k → evaluate)
             → K × expert_iteration_round (search train → distill → SFT → evaluate) → report

The default `models` are the first paper's two: `sft` (recipe `optimal`, stages `*-op`) and `bt`
(recipe `self_backtrack`, stages `*-bt`); expert iteration starts from `expert_iteration.model`.

Every stage is a task from `tasks.stages` that caches on its key (see there): rerunning a
flow after a crash, from the CLI or with the UI's Retry, skips finished stages, resumes the
one that broke and runs what follows. `expert_iteration_round` is a subflow that also runs
alone, given a model URI and a round number; so is `grpo_round`, given a model's name (and
optionally another model URI to start from). Artifacts live under `run_dir`:

    data/  data-{m}/  sft-{m}/  eval-sft-{m}/  (m: each model's `stage`, by default op and bt)
    passk-{m}/  grpo-{m}/  passk-grpo-{m}/  eval-grpo-{m}/  (models named in `grpo.models`)
    ei{r}/search/  ei{r}/data/  ei{r}/sft/  ei{r}/eval/  report/  report.md  metrics.json
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from flows import stage_runs
from flows.ledger import Ledger
from sbt_core import domains, io
from sbt_core.reports import pipeline as reporting
from sbt_core.reports.formatting import embed_images
from sbt_core.config import ModelConfig, RunConfig
from tasks import stages
from tasks.stages import StageResult


def train_models(ledger: Ledger, config: RunConfig, data: StageResult, here: str, prefix: str = "",
                 names: list[str] | None = None) -> tuple[dict, dict[str, str], dict[str, StageResult]]:
    """build-data then SFT for each model of `config` (or of `names`), every model's data first: the stages
    `{prefix}build-data-{tag}` (folder `here/data-{tag}`) and `{prefix}sft-{tag}` (`here/sft-{tag}`), `tag`
    being the model's `stage` or its name. Returns (name -> model_spec(name), name -> tag, name -> SFT result).
    The pipeline, the study and the ablations train their models through it."""
    specs = {name: config.model_spec(name) for name in names or config.models}
    tag = {name: spec.stage or name for name, (spec, *_) in specs.items()}
    rows = {name: ledger(f"{prefix}build-data-{tag[name]}", stages.build_data, cfg=data_cfg, data=data,
                         out_dir=io.join(here, f"data-{tag[name]}"), domain=config.domain)
            for name, (_, _, _, data_cfg) in specs.items()}
    trained = ledger.together({name: (f"{prefix}sft-{tag[name]}", stages.sft,
                                      dict(cfg=sft_cfg, model=model_cfg, data=rows[name],
                                           out_dir=io.join(here, f"sft-{tag[name]}")))
                               for name, (_, model_cfg, sft_cfg, _) in specs.items()})
    return specs, tag, trained


@flow(name="expert-iteration-round", log_prints=True)
def expert_iteration_round(config: RunConfig, run_dir: str, round: int, model_uri: str) -> dict[str, Any]:
    """Round r: search train problems with the slow search, keep verified outputs, distill, evaluate."""
    stages.use_storage_block()
    ei = config.expert_iteration
    ledger = Ledger(config)
    data = ledger("generate", stages.generate, cfg=config.generate, out_dir=io.join(run_dir, "data"))
    base = stages.external(model_uri)
    here = io.join(run_dir, f"ei{round}")
    split = domains.get(config.domain).eval_splits[-1] if ei.transductive else "train"
    searched = ledger(f"ei{round}-search", stages.search, cfg=config.eval.search_config(ei.method), model=base,
                      data=data, split=split, limit=ei.train_problems, out_dir=io.join(here, "search"),
                      domain=config.domain)
    spec, _, _, data_cfg = config.model_spec(ei.model)
    tag = spec.stage or ei.model
    replay = {}
    if ei.replay:  # the start model's own training set, as the pipeline built it (cached under its key)
        replay = dict(replay=ei.replay, seed=round,
                      replay_data=ledger(f"build-data-{tag}", stages.build_data, cfg=data_cfg, data=data,
                                         out_dir=io.join(run_dir, f"data-{tag}"), domain=config.domain))
    distilled = ledger(f"ei{round}-distill", stages.distill, results=searched, out_dir=io.join(here, "data"),
                       transductive=ei.transductive, domain=config.domain, **replay)
    # Fine-tuned from the last round's model, or from the model expert iteration starts from.
    start = model_uri if ei.continue_from_previous else io.join(run_dir, f"sft-{tag}", "model")
    model = ledger(f"ei{round}-sft", stages.sft, cfg=ei.train, model=ModelConfig(size=None, path=start),
                   data=distilled, out_dir=io.join(here, "sft"), base=stages.external(start))
    evaluation = ledger(f"ei{round}-evaluate", stages.evaluate, cfg=config.eval, methods=config.eval.ei_methods,
                        model=model, data=data, out_dir=io.join(here, "eval"), domain=config.domain)
    rows = None if ledger.planning else io.parquet_rows(distilled["outputs"]["sft"])
    if not ledger.planning:
        get_run_logger().info("round %d: %d verified outputs distilled from %d searched problems", round, rows,
                              min(ei.train_problems, io.parquet_rows(data["outputs"][split])))
    return {"model": model["outputs"]["model"], "model_result": model, "evaluation": evaluation,
            "distilled_rows": rows, "searched": searched, "distilled": distilled, "stages": ledger.rows}


@flow(name="grpo-round", log_prints=True)
def grpo_round(config: RunConfig, run_dir: str, model: str, model_uri: str | None = None) -> dict[str, Any]:
    """GRPO on one model of the run: pass@k on the held-out split before, GRPO from the verifier's reward on
    train problems, pass@k after, and `grpo.methods` (default: the model's own) on the tuned model.

    `model` names a model of `config.models` (its stage names and methods); `model_uri` is where it starts
    from (default: that model's SFT output in run_dir, which must exist).
    """
    stages.use_storage_block()
    if model not in config.models:
        raise ValueError(f"model {model!r} is not one of the run's models ({', '.join(config.models)})")
    spec, *_ = config.model_spec(model)
    tag = spec.stage or model
    ledger = Ledger(config)
    data = ledger("generate", stages.generate, cfg=config.generate, out_dir=io.join(run_dir, "data"))
    base = stages.external(model_uri or io.join(run_dir, f"sft-{tag}", "model"))
    length, passk = config.grpo_eval()
    before = ledger(f"passk-{tag}", stages.study_eval, cfg=passk, kind="samples", model=base, data=data,
                    out_dir=io.join(run_dir, f"passk-{tag}"), domain=config.domain, max_new_tokens=length)
    tuned = ledger(f"grpo-{tag}", stages.grpo, cfg=config.grpo, model=base, data=data,
                   out_dir=io.join(run_dir, f"grpo-{tag}"), domain=config.domain, max_completion_length=length)
    after = ledger(f"passk-grpo-{tag}", stages.study_eval, cfg=passk, kind="samples", model=tuned, data=data,
                   out_dir=io.join(run_dir, f"passk-grpo-{tag}"), domain=config.domain, max_new_tokens=length)
    evaluation = ledger(f"eval-grpo-{tag}", stages.evaluate, cfg=config.eval,
                        methods=config.grpo.methods or spec.methods, model=tuned, data=data,
                        out_dir=io.join(run_dir, f"eval-grpo-{tag}"), domain=config.domain)
    return {"model": tuned["outputs"]["model"], "evaluation": evaluation,
            "grpo": {"before": before, "after": after, "grpo": tuned}, "stages": ledger.rows}


@flow(name="sbt-pipeline", log_prints=True)
def pipeline(config: RunConfig = RunConfig(), run_dir: str = "runs/tiny") -> dict[str, Any]:
    """Every model of the config on its domain, expert iteration included; writes run_dir/report.md and
    metrics.json."""
    stages.use_storage_block()
    t0 = time.monotonic()
    ledger = Ledger(config)
    if not ledger.planning:
        io.remove_temp_files(run_dir, recursive=False)  # of a kill while copying the report or writing run.json
        # The config first, so that `sbt status RUN_DIR` can plan a run that was killed before its end.
        io.write_json({"run_dir": str(run_dir), "status": "running", "config": config.model_dump(mode="json")},
                      io.join(run_dir, "run.json"))
    data = ledger("generate", stages.generate, cfg=config.generate, out_dir=io.join(run_dir, "data"))
    specs, tag, trained = train_models(ledger, config, data, run_dir)
    evaluations = ledger.together({name: (f"eval-sft-{tag[name]}", stages.evaluate,
                                          dict(cfg=config.eval, methods=spec.methods, model=trained[name], data=data,
                                               out_dir=io.join(run_dir, f"eval-sft-{tag[name]}"), domain=config.domain))
                                   for name, (spec, *_) in specs.items()})
    tuned = {}
    for name in config.grpo.models:
        out = ledger.subflow(grpo_round, config, run_dir, name, trained[name]["outputs"]["model"])
        ledger.merge(out["stages"])
        evaluations[f"grpo_{name}"], tuned[name] = out["evaluation"], out["grpo"]
    model_uri = trained[config.expert_iteration.model]["outputs"]["model"] if config.expert_iteration.rounds else None
    distilled = {}
    rounds = [{"eval": evaluations[config.expert_iteration.model]}] if config.expert_iteration.rounds else []
    for r in range(1, config.expert_iteration.rounds + 1):
        out = ledger.subflow(expert_iteration_round, config, run_dir, r, model_uri)
        ledger.merge(out["stages"])
        model_uri, evaluations[f"ei{r}"], distilled[r] = out["model"], out["evaluation"], out["distilled_rows"]
        rounds.append({"search": out["searched"], "distill": out["distilled"], "eval": out["evaluation"]})
    notes = [
        f"preset `{config.name}`; {config.eval.limit or 'all'} problems per split; config hash "
        f"{io.config_hash(config.model_dump(mode='json'))}; code {io.code_version()}",
        "Self-backtracking rows never consult the verifier: the model's mean log-probability picks the answer.",
        *[f"expert-iteration round {r}: {n} verified outputs distilled" for r, n in distilled.items()],
    ]
    report = ledger("report", stages.report, title=config.name, evaluations=evaluations,
                    out_dir=io.join(run_dir, "report"), models=config.report_models(), domain=config.domain,
                    search_method=config.expert_iteration.method, notes=notes, grpo=tuned or None,
                    rounds=rounds or None, round_methods=config.eval.ei_methods)
    if ledger.planning:
        return {"run_dir": str(run_dir), **ledger.summary()}
    _publish(report, config.report_models())
    wall = time.monotonic() - t0
    work = sum(r["work_seconds"] for r in ledger.rows)
    summary = {
        "run_dir": str(run_dir),
        "status": "done",
        "report": report["outputs"]["report_top"],
        "metrics": report["outputs"]["metrics_top"],
        "stages": ledger.rows,
        **ledger.summary(),
        "wall_seconds": round(wall, 2),
        "stage_work_seconds": round(work, 2),
        "orchestration_seconds_per_stage": round((wall - work) / max(len(ledger.rows), 1), 3),
        "config": config.model_dump(mode="json"),
    }
    ran = summary["ran"]
    io.write_json(summary, io.join(run_dir, "run.json"))
    log = get_run_logger()
    if ran:
        log.info("pipeline: ran %d stages (%s), %d cached; %.1f s", len(ran), ", ".join(ran),
                 len(summary["cached"]), wall)
    else:
        log.info("pipeline: nothing to do, all %d stages cached; report at %s", len(ledger.rows),
                 summary["report"])
    return summary


def _publish(report: StageResult, models: dict[str, dict]) -> None:
    """The report as Prefect artifacts: its table (same order and units) and its markdown, plots embedded."""
    out = report["outputs"]
    rows = io.read_json(out["metrics"])
    plots = {io.basename(out[k]): io.read_bytes(out[k]) for k in ("plot_scaling", "plot_rounds", "plot_grpo")
             if k in out}
    markdown = embed_images(io.read_bytes(out["report"]).decode(), plots)
    create_table_artifact(reporting.table(rows, reporting.Models(models)), key="sbt-metrics",
                          description="The report's table: accuracy in % (strict verifier), tokens, false claims")
    create_markdown_artifact(markdown, key="sbt-report", description="The run's report (Table 1 shape)")


@flow(name="sbt-stage", on_completion=[stage_runs.resume_parent])
def stage_flow(task: str, params: dict[str, Any]):
    """One stage as its own flow run: what `execution.mode: deployments` launches on a work pool.

    `task` names a task of `tasks.stages` (generate, build-data, sft, evaluate, search, distill,
    report); `params` are its arguments as JSON. The run ends `Completed`, or `Completed` named
    `Cached` when the stage's outputs were already there; a failed one can be retried from the UI,
    and when it completes it sends its failed pipeline run back to retry (`stage_runs`).
    """
    if task not in stages.TASKS:
        raise ValueError(f"unknown stage task {task!r}; choose from {sorted(stages.TASKS)}")
    state = stages.TASKS[task](**stages.coerce_params(task, params), return_state=True)
    result = state.result()  # raises the stage's own error when it failed
    # A flow that returns a task's state gets a fresh Completed; a new state keeps the name.
    return Completed(name="Cached", message=state.message, data=result) if state.name == "Cached" else result
