"""Evaluation flows: the newest model of a run, evaluated on val_seen and val_new.

`evaluate_latest` is what the nightly deployment runs. It picks the newest finished model of
`run_dir` (the last expert-iteration round's, else the backtracking SFT model), evaluates it
with `eval.ei_methods`, and publishes the table. Its stage caches on the model's key, so a
night with no new model does no work.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.ledger import Ledger
from sbt_core import io
from sbt_core.config import RunConfig
from tasks import stages


def latest_model(run_dir: str, config: RunConfig) -> stages.StageResult:
    """The StageResult of the newest finished model stage under run_dir: the last expert-iteration round's,
    else the model expert iteration starts from."""
    start = config.expert_iteration.model
    tag = config.models[start].stage or start if start in config.models else start
    candidates = [io.join(run_dir, f"ei{r}", "sft") for r in range(config.expert_iteration.rounds, 0, -1)]
    candidates.append(io.join(run_dir, f"sft-{tag}"))
    for folder in candidates:
        record_uri = io.join(folder, stages.RECORD)
        if io.exists(record_uri) and (record := io.read_json(record_uri)).get("status") == "done":
            return record
    raise FileNotFoundError(f"no finished model under {run_dir} (looked in {', '.join(candidates)})")


@flow(name="sbt-evaluate-latest", log_prints=True)
def evaluate_latest(config: RunConfig = RunConfig(), run_dir: str = "runs/tiny") -> dict[str, Any]:
    """Evaluate the newest model of `run_dir` on the domain's evaluation splits."""
    stages.use_storage_block()
    model = latest_model(run_dir, config)
    ledger = Ledger(config)  # in deployments mode the evaluation runs on the GPU deployment (its shards too)
    data = ledger("generate", stages.generate, cfg=config.generate, out_dir=io.join(run_dir, "data"))
    out_dir = io.join(run_dir, "eval-latest", model["key"])
    result = ledger("eval-latest", stages.evaluate, cfg=config.eval, methods=config.eval.ei_methods, model=model,
                    data=data, out_dir=out_dir, domain=config.domain)
    summary = io.read_json(result["outputs"]["summary"])
    table = [{"method": m, "split": s, "accuracy_strict": v["accuracy_strict"], "accuracy_paper": v["accuracy_paper"],
              "tokens_per_problem": round(v["tokens_per_problem"], 1)}
             for m, per in summary.items() for s, v in per.items()]
    create_table_artifact(table, key="sbt-latest-eval", description=f"Newest model: {model['dir']}")
    get_run_logger().info("evaluated %s (%s)", model["dir"], "cached" if ledger.rows[-1]["cached"] else "new")
    return {"model": model["dir"], "summary": result["outputs"]["summary"]}
