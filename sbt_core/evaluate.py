"""Evaluation: run decoders on the domain's evaluation splits (Countdown: val_seen and val_new;
Sudoku: val), summarise accuracy in both verifier modes.

Every figure says which verifier mode produced it (`strict` or `paper`). The false-claim
rate is the share of final answers that claim the goal but fail the strict verifier. A domain's
own per-answer figures (Sudoku: `cell_accuracy`) are averaged beside them.

Run: `sbt evaluate --model runs/sft/model --data data/countdown --out runs/eval`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter

import pyarrow as pa

from sbt_core import domains, io, selectors
from sbt_core.config import SearchConfig
from sbt_core.domains import Domain
from sbt_core.search import run as search_stage
from sbt_core.search.common import FanOut

log = logging.getLogger(__name__)

def summarize(results: pa.Table, domain: Domain) -> dict:
    """Accuracy (strict and paper modes), categories, false claims, cost per problem."""
    n = len(results)
    rows = results.select(
        ["claims_goal", "correct_strict", "category_strict", "correct_paper", "category_paper",
         "generated_tokens", "forward_passes", "rounds", "seconds"]
    ).to_pylist()
    false_claims = [r["category_strict"] for r in rows if r["claims_goal"] and not r["correct_strict"]]
    # Where a search loses: among its own candidates, how many verify, would any have done (the ceiling),
    # and what each verifier-free selector would have picked.
    problems = results.select(list(domain.columns)).to_pylist()
    picks, verdicts = selectors.per_problem(problems, results["candidates"].to_pylist(), domain)
    cand_ok, cand_n, any_ok = sum(map(sum, verdicts)), sum(map(len, verdicts)), sum(picks["ceiling"])
    div = max(n, 1)
    accuracy = sum(r["correct_strict"] for r in rows) / div
    extra: dict[str, float] = {}
    for problem, output in zip(problems, results["output"].to_pylist()):
        for k, v in domain.extra_metrics(problem, output).items():
            extra[k] = extra.get(k, 0.0) + v / div
    return {
        "problems": n,
        "accuracy_strict": accuracy,
        "accuracy_paper": sum(r["correct_paper"] for r in rows) / div,
        "categories_strict": dict(Counter(r["category_strict"] for r in rows)),
        "categories_paper": dict(Counter(r["category_paper"] for r in rows)),
        "false_claim_rate": len(false_claims) / div,
        "false_claim_categories": dict(Counter(false_claims)),
        "candidates_per_problem": cand_n / div,
        "candidate_precision_strict": cand_ok / cand_n if cand_n else 0.0,
        "any_candidate_correct_strict": any_ok / div,
        "selection_gap": any_ok / div - accuracy,  # ceiling minus chosen
        # Accuracy had each selector picked among the same candidates (searches with a pool of several).
        **({"selectors": {k: sum(v) / div for k, v in picks.items() if k != "ceiling"}}
           if any(len(v) > 1 for v in verdicts) else {}),
        "rolled_back_share": sum(r["rounds"] > 1 for r in rows) / div,  # searches that took back a step
        "tokens_per_problem": sum(r["generated_tokens"] for r in rows) / div,
        # None where the engine does not count its model calls (vLLM)
        "forward_passes_per_problem": (None if any(r["forward_passes"] is None for r in rows)
                                       else sum(r["forward_passes"] for r in rows) / div),
        "seconds": sum(r["seconds"] for r in rows),
        **extra,
    }


def markdown_table(summary: dict, splits: tuple[str, ...]) -> str:
    """How many problems each split had, then methods as rows: strict and paper accuracy per split,
    tokens/problem, false claims."""
    counts = {s: next((per[s]["problems"] for per in summary.values() if s in per), 0) for s in splits}
    note = "Problems: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + ".\n\n"
    head = "| method | " + " | ".join(
        f"{s} strict | {s} paper | {s} false-claim | {s} tokens/problem" for s in splits
    ) + " |"
    lines = [head, "|" + "---|" * (1 + 4 * len(splits))]
    for name, per_split in summary.items():
        cells = []
        for s in splits:
            m = per_split.get(s)
            cells += (
                [f"{m['accuracy_strict']:.1%}", f"{m['accuracy_paper']:.1%}", f"{m['false_claim_rate']:.1%}",
                 f"{m['tokens_per_problem']:.0f}"] if m else ["-"] * 4
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return note + "\n".join(lines) + "\n"


def run(
    model_path: str, data_dir: str, out_dir: str, methods: dict[str, SearchConfig], *,
    domain: str = domains.DEFAULT, splits=None, limit: int | None = None, progress=None,
    fan_out: FanOut | None = None,
) -> dict[str, str]:
    """Stage entry: one search per (method, split); writes summary.json and summary.md.

    `fan_out` (see `search.run.run`) runs every missing shard of every (method, split) at once
    elsewhere; this process then gathers and summarises them without loading the model."""
    d = domains.get(domain)
    splits = tuple(splits or d.eval_splits)
    searches = [(name, cfg, split, io.join(data_dir, f"{split}.parquet"), io.join(out_dir, name, split))
                for name, cfg in methods.items() for split in splits]
    if fan_out is not None:
        fan_out([dataclasses.replace(unit, name=f"{name}/{split}/{unit.name}") for name, cfg, split, data_uri, out in searches
                 for unit in search_stage.missing_shards(cfg, model_path, data_uri, out, domain=domain, limit=limit)])
    # One model per engine setting, loaded once; the searches of one setting run together, and the last is
    # released before the next is loaded (a vLLM engine and the HF model never hold the device at once).
    loaders: dict[str, search_stage.Loader] = {}
    by_inference = sorted(range(len(searches)), key=lambda i: json.dumps(searches[i][1].inference(), sort_keys=True))
    found: dict[int, dict] = {}
    for i in by_inference:
        name, cfg, split, data_uri, out = searches[i]
        key = json.dumps(cfg.inference(), sort_keys=True)
        for other in [k for k in loaders if k != key]:
            loaders.pop(other).release()
        lm = loaders.setdefault(key, search_stage.lazy_lm(model_path, domain, inference=cfg.inference()))
        res = search_stage.run(cfg, model_path, data_uri, out, domain=domain, limit=limit, lm=lm, progress=progress,
                               fan_out=None if fan_out is None else _written)
        found[i] = summarize(io.read_parquet(res["results"]), d)
        log.info("%s %s: strict %.3f paper %.3f", name, split, found[i]["accuracy_strict"], found[i]["accuracy_paper"])
    for loader in loaders.values():
        loader.release()
    summary: dict[str, dict] = {}
    for i, (name, _, split, _, _) in enumerate(searches):
        summary.setdefault(name, {})[split] = found[i]
    uri = io.write_json(summary, io.join(out_dir, "summary.json"))
    md = io.join(out_dir, "summary.md")
    io.write_bytes(md, markdown_table(summary, splits).encode())
    config = {"methods": {k: v.model_dump(mode="json") for k, v in methods.items()}, "model": str(model_path),
              "domain": domain, "splits": list(splits), "limit": limit}
    io.write_manifest(out_dir, "evaluate", config, [io.join(data_dir, f"{s}.parquet") for s in splits],
                      {"summary": uri, "summary_md": md})
    return {"summary": uri, "summary_md": md}


def _written(units: list) -> None:
    """The fan-out of a search whose shards the evaluation's own fan-out has written already."""
