"""`sbt-ladder`: the compute ladder (`sbt_core.ladder`) as a flow over the pipeline's own stages.

Per rung: generate → build-data (the rung's model recipe) → [onpolicy: D_back rows from an earlier
rung's or a given model's own wrong steps] → SFT → evaluate (the ladder's methods on the rung's
evaluation splits); then one ladder-report. Every stage caches on its key, so a killed
ladder, or one continued on a later day, reruns only what is unfinished (SFT from its last
checkpoint), and a rung added to the config trains only itself. Rungs that share a data config share
its folder. Artifacts under run_dir:

    data/<generate hash>/  data/<generate hash>-<recipe hash>/  (shared by rungs with the same data)
    <rung>/[onpolicy/]  <rung>/sft/  <rung>/eval/  report/  ladder.md  ladder.json  ladder.png (copies of report/'s)
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.ledger import Ledger
from sbt_core import io
from sbt_core.reports.formatting import embed_images
from sbt_core.ladder import LadderConfig
from tasks import stages


def _short(config) -> str:
    return io.config_hash(config.model_dump(mode="json"))[:10]


@flow(name="sbt-ladder", log_prints=True)
def ladder(config: LadderConfig, run_dir: str = "runs/ladder-cpu") -> dict[str, Any]:
    """Every rung of the ladder, cheapest first as listed; writes run_dir/ladder.md."""
    stages.use_storage_block()
    t0 = time.monotonic()
    ledger = Ledger(config)
    done: dict[str, dict] = {}
    for name, rung in config.rungs.items():
        spec, model_cfg, sft_cfg, data_cfg = rung.model_spec(config.model)
        # Data stages are named (and their folders placed) by their config, not the rung: rungs with the same data
        # share them (a per-rung folder name would rebuild the same data once per rung).
        gen = _short(rung.generate)
        recipe = f"{gen}-{_short(data_cfg)}-{spec.recipe}"
        data = ledger(f"generate-{gen}", stages.generate, cfg=rung.generate, out_dir=io.join(run_dir, "data", gen))
        built = ledger(f"build-data-{recipe}", stages.build_data, cfg=data_cfg, data=data,
                       out_dir=io.join(run_dir, "data", recipe), domain=rung.domain)
        if name in config.onpolicy:  # a lever: this rung's data plus another model's own wrong steps
            op = config.onpolicy[name]
            source = done[op.source]["sft"] if op.source in done else stages.external(op.source)
            built = ledger(f"{name}-onpolicy", stages.onpolicy, cfg=op, model=source, data=data, base=built,
                           out_dir=io.join(run_dir, name, "onpolicy"), domain=rung.domain)
        model = ledger(f"{name}-sft", stages.sft, cfg=sft_cfg, model=model_cfg, data=built,
                       out_dir=io.join(run_dir, name, "sft"))
        evaluation = ledger(f"{name}-evaluate", stages.evaluate, cfg=rung.eval, methods=config.methods, model=model,
                            data=data, out_dir=io.join(run_dir, name, "eval"), domain=rung.domain)
        done[name] = {"sft": model, "eval": evaluation}
    notes = [f"ladder `{config.name}`, config hash {io.config_hash(config.model_dump(mode='json'))}, code "
             f"{io.code_version()}; each rung trains `{config.model}` from scratch with its own schedule",
             "training FLOPs are 6·N·D: N parameters, D tokens processed (prompts included, attention left out)"]
    out = ledger("ladder-report", stages.ladder_report, ladder=config, rungs=done, out_dir=io.join(run_dir, "report"),
                 notes=notes)
    if ledger.planning:
        return {"run_dir": str(run_dir), **ledger.summary()}
    md = io.read_bytes(out["outputs"]["ladder_md"]).decode()
    create_markdown_artifact(embed_images(md, {"ladder.png": io.read_bytes(out["outputs"]["ladder_png"])}),
                             key="sbt-ladder", description="The compute ladder: gain over greedy against training FLOPs")
    ran = [r["stage"] for r in ledger.rows if not r["cached"]]
    get_run_logger().info("ladder: ran %d stages, %d cached; %s", len(ran), len(ledger.rows) - len(ran),
                          out["outputs"]["ladder_md_top"])
    return {"ladder_md": out["outputs"]["ladder_md_top"], "ladder_json": out["outputs"]["ladder_json_top"],
            "stages": ledger.rows, "ran": ran, "cached": [r["stage"] for r in ledger.rows if r["cached"]],
            "wall_seconds": round(time.monotonic() - t0, 2)}
