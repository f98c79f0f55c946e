"""Studies over the pipeline: ablations of the backtracking model, and the pipeline over several seeds.

`sbt-ablations` retrains the backtracking model once per data-mix variant (error-type ratio,
D_op:D_back ratio; see `AblationConfig`) and runs the b x N search grid on the preset's own
model. It calls the pipeline's stages with the pipeline's folders for everything the preset
shares with it (data, the preset's D_op ∪ D_back and its model), so after `sbt run` those are
served from cache; variants live under run_dir/ablations/<variant>/.

`sbt-seeds` runs the whole pipeline once per seed offset (offset 0 in run_dir itself, offset s
in run_dir/seeds/seed<s>) and writes run_dir/seeds.md: mean, spread and the paper's shape per seed.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger

from flows.ledger import Ledger
from flows.pipeline import pipeline, train_models
from sbt_core import io
from sbt_core.config import RunConfig
from tasks import stages


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def ablation_variants(config: RunConfig) -> dict[str, Any]:
    """Variant name ("group: label") -> its BuildDataConfig; each changes one field of the preset's (as the
    backtracking model, `expert_iteration.model`, is built)."""
    base, ab = config.model_spec(config.expert_iteration.model)[3], config.ablations
    out = {f"error-type ratio: {label}": base.model_copy(update={"error_type_ratio": tuple(ratio)})
           for label, ratio in ab.error_type_ratios.items()}
    out |= {f"D_op:D_back: 1:{bpo:g}": base.model_copy(update={"backtrack_per_optimal": bpo})
            for bpo in ab.backtrack_per_optimal}
    return out


@flow(name="sbt-ablations", log_prints=True)
def ablations(config: RunConfig = RunConfig(), run_dir: str = "runs/tiny") -> dict[str, Any]:
    """Data-mix variants of the backtracking model and the b x N grid; writes run_dir/ablations/ablations.md."""
    stages.use_storage_block()
    ab = config.ablations
    ledger = Ledger(config)
    data = ledger("generate", stages.generate, cfg=config.generate, out_dir=io.join(run_dir, "data"))
    # The preset's backtracking model, exactly as the pipeline builds it (cached after `sbt run`).
    name = config.expert_iteration.model
    specs, _, trained = train_models(ledger, config, data, run_dir, names=[name])
    _, model_cfg, sft_cfg, data_cfg = specs[name]
    model = trained[name]
    grid_methods = list(dict.fromkeys([*ab.methods, *ab.search_grid]))
    grid = ledger("ablation-grid-evaluate", stages.evaluate, cfg=config.eval, methods=grid_methods, model=model,
                  data=data, out_dir=io.join(run_dir, "ablations", "preset", "eval"), domain=config.domain)
    evaluations: dict[str, Any] = {}
    for name, build_cfg in ablation_variants(config).items():
        if build_cfg == data_cfg:
            evaluations[name] = grid
            continue
        tag = _slug(name)
        here = io.join(run_dir, "ablations", tag)
        d = ledger(f"ablation-{tag}-build-data", stages.build_data, cfg=build_cfg, data=data,
                   out_dir=io.join(here, "data-bt"), domain=config.domain)
        m = ledger(f"ablation-{tag}-sft", stages.sft, cfg=sft_cfg, model=model_cfg, data=d,
                   out_dir=io.join(here, "sft-bt"))
        evaluations[name] = ledger(f"ablation-{tag}-evaluate", stages.evaluate, cfg=config.eval, methods=ab.methods,
                                   model=m, data=data, out_dir=io.join(here, "eval"), domain=config.domain)
    notes = [f"preset `{config.name}`; {config.eval.limit or 'all'} problems per split; each variant changes one "
             "build_data field of the preset and retrains the backtracking model with the preset's SFT settings",
             "the b x N grid runs on the preset's backtracking model; no row consults the verifier"]
    out = ledger("ablation-report", stages.ablation_report, title=config.name, variants=evaluations, grid=grid,
                 out_dir=io.join(run_dir, "ablations"), model=config.expert_iteration.model,
                 models=config.report_models(), domain=config.domain, notes=notes)
    get_run_logger().info("ablations: %s", out["outputs"]["ablations_md"])
    return {"ablations": out["outputs"]["ablations_md"], "stages": ledger.rows}


@flow(name="sbt-seeds", log_prints=True)
def seeds(config: RunConfig = RunConfig(), run_dir: str = "runs/tiny", count: int = 3) -> dict[str, Any]:
    """The pipeline at seed offsets 0..count-1; writes run_dir/seeds.md and seeds.json."""
    from sbt_core.reports import seeds as report

    if count < 1:
        raise ValueError(f"count: need at least one seed, got {count}")
    metrics = {}
    for offset in range(count):
        where = run_dir if offset == 0 else io.join(run_dir, "seeds", f"seed{offset}")
        summary = pipeline.with_options(flow_run_name=f"{config.name}-seed{offset}")(
            config=config.with_seed_offset(offset), run_dir=where)
        metrics[offset] = summary["metrics"]
    out = report.run(metrics, run_dir, config.name, config.report_models())
    get_run_logger().info("seeds: %s", out["seeds_md"])
    return {**out, "metrics": metrics}
