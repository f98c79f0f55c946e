"""`sbt-study`: backtracking vs direct models at equal test-time compute (arXiv 2504.07052).

    per part (a domain's run config) of the study:
        generate → per model of its `models`: build-data (its recipe) → SFT → study-eval
                   (and, for the models its `grpo.models` names: GRPO → study-eval of the tuned model)
    → study-report (study.md, study.json, one plot per part; Prefect artifacts)

The stages are the pipeline's (`tasks.stages`), cached on their keys and resumable the same way:
a killed study rerun with the same config and run dir redoes only what did not finish. Each part
lives in run_dir/<label>/ with the pipeline's folder names (data/, data-X/, sft-X/) plus
study-X/ per model; stage names carry the label (`countdown-sft-dfs`). How a model is evaluated
follows its recipe (`recipes.RECIPES[...].study`): trace recipes decode once at token budgets,
direct ones sample n, self-backtracking runs its search; see `sbt_core.study`.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.ledger import Ledger
from flows.pipeline import train_models
from sbt_core import io
from sbt_core.recipes import RECIPES
from sbt_core.config import StudyConfig
from sbt_core.study import decode_length
from tasks import stages
from tasks.stages import StageResult


@flow(name="sbt-study", log_prints=True)
def study(config: StudyConfig, run_dir: str = "runs/study") -> dict[str, Any]:
    """Every model of every part trained and evaluated at equal compute; writes run_dir/study.md and study.json."""
    stages.use_storage_block()
    t0 = time.monotonic()
    ledger = Ledger(config)
    parts: dict[str, dict] = {}
    evaluations: dict[str, dict[str, StageResult]] = {}
    for label, run in config.domains.items():
        here = io.join(run_dir, label)
        data = ledger(f"{label}-generate", stages.generate, cfg=run.generate, out_dir=io.join(here, "data"))
        parts[label] = {"domain": run.domain, "generate": run.generate.model_dump(mode="json"), "labels": {},
                        "training": {}}
        specs, tags, trained = train_models(ledger, run, data, here, prefix=f"{label}-")
        evaluations[label] = ledger.together({
            name: (f"{label}-study-{tags[name]}", stages.study_eval,
                   dict(cfg=run.study, kind=RECIPES[spec.recipe].study, model=trained[name], data=data,
                        out_dir=io.join(here, f"study-{tags[name]}"), domain=run.domain,
                        max_new_tokens=run.eval.max_new_tokens))
            for name, (spec, *_) in specs.items()})
        for name, (spec, *_) in specs.items():
            tag, model = tags[name], trained[name]
            kind = RECIPES[spec.recipe].study
            parts[label]["labels"][name] = spec.label or name
            if "metrics" in model["outputs"]:  # (an SFT on no rows keeps its base model and measures nothing)
                parts[label]["training"][name] = model["outputs"]["metrics"]
            if name in run.grpo.models:  # GRPO with rollouts as long as the model's own evaluation decodes
                length = run.grpo.max_completion_length or decode_length(run.study, kind, run.eval.max_new_tokens)
                tuned = ledger(f"{label}-grpo-{tag}", stages.grpo, cfg=run.grpo, model=model, data=data,
                               out_dir=io.join(here, f"grpo-{tag}"), domain=run.domain, max_completion_length=length)
                evaluations[label][f"grpo_{name}"] = ledger(f"{label}-study-grpo-{tag}", stages.study_eval,
                                                            cfg=run.study, kind=kind, model=tuned, data=data,
                                                            out_dir=io.join(here, f"study-grpo-{tag}"),
                                                            domain=run.domain, max_new_tokens=run.eval.max_new_tokens)
                parts[label]["labels"][f"grpo_{name}"] = f"{spec.label or name} + GRPO"
                parts[label]["training"][f"grpo_{name}"] = tuned["outputs"]["metrics"]
        evaluations[label] = {key: evaluations[label][key] for key in parts[label]["labels"]}  # each model, its GRPO
    notes = [f"study `{config.name}`; config hash {io.config_hash(config.model_dump(mode='json'))}; "
             f"code {io.code_version()}",
             "Verifier-free rows never consult the verifier; pass@n rows (dashed in the plots) let it pick, as the "
             "paper's best-of-n does."]
    out = ledger("study-report", stages.study_report, title=config.name, parts=parts, evaluations=evaluations,
                 out_dir=io.join(run_dir, "report"), notes=notes)
    if ledger.planning:
        return {"run_dir": str(run_dir), **ledger.summary()}
    _publish(out)
    wall = time.monotonic() - t0
    summary = {"run_dir": str(run_dir), "study_md": out["outputs"]["study_md_top"],
               "study_json": out["outputs"]["study_json_top"], "stages": ledger.rows,
               "ran": [r["stage"] for r in ledger.rows if not r["cached"]],
               "cached": [r["stage"] for r in ledger.rows if r["cached"]], "wall_seconds": round(wall, 2)}
    io.write_json(summary, io.join(run_dir, "run.json"))
    get_run_logger().info("study: ran %d stages, %d cached; %.1f s; %s", len(summary["ran"]), len(summary["cached"]),
                          wall, summary["study_md"])
    return summary


def _publish(out: StageResult) -> None:
    """study.md (plots embedded) and its winners table as Prefect artifacts."""
    from sbt_core.reports.formatting import embed_images

    o = out["outputs"]
    plots = {io.basename(uri): io.read_bytes(uri) for k, uri in o.items() if k.startswith("plot_") and
             not k.endswith("_top")}
    markdown = embed_images(io.read_bytes(o["study_md"]).decode(), plots)
    summary = io.read_json(o["study_json"])
    rows = []
    for label, part in summary["parts"].items():
        for level, entry in part["winners"].items():
            for pool in ("verifier_free", "with_verifier"):
                if pool in entry:
                    w = entry[pool]
                    rows.append({"part": label, "compute": level, "flops_per_problem": f"{entry['flops']:.3g}",
                                 "rule": pool.replace("_", "-"), "winner": w["winner"],
                                 "accuracy_%": round(100 * w["accuracy"], 1),
                                 "runner_up": w["runner_up"] or "-", "clear_of_noise": w["clear"]})
    create_table_artifact(rows, key="sbt-study-winners",
                          description="Who wins at low, middle and high test-time compute, per part")
    create_markdown_artifact(markdown, key="sbt-study", description="The study's report: accuracy against FLOPs")
