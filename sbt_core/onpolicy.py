"""On-policy D_back: backtracking examples built from a trained model's own wrong steps.

The first paper's D_back errors are synthetic (a random wrong result, an absent number, a dead
end). A small model's real mistakes look different: plausible arithmetic slips, most often the
last step bent onto the target. Here the model itself writes the errors:

1. for `problems` train problems, take a prefix of the optimal path of random length (0 to
   len-1 steps, as D_back does) and let the model write its next step, `samples` times at
   `temperature`;
2. a written step the strict verifier rejects *at that step* (Countdown: a computation error or
   a rule violation; never a format error, nor a legal step) is an on-policy error;
3. each distinct (problem, prefix, wrong step) becomes a D_back row: the optimal prefix, the
   model's wrong step, `<backtrack>`, with the loss of the paper's D_back rows (the wrong step
   masked, prefix and `<backtrack>` supervised).

The rows are added to the model's own training set (D_op ∪ D_back), and a new model is trained
on the union. The verifier is used to build training data only, never at test time.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import torch

from sbt_core import domains, io
from sbt_core.config import OnPolicyConfig
from sbt_core.domains import BACKTRACK
from sbt_core.domains.base import split_response
from sbt_core.models import load
from sbt_core.search.common import LM, make_generator

log = logging.getLogger(__name__)

NOT_A_STEP_ERROR = {"correct", "not_reached", "format_error"}


def harvest(lm: LM, problems: list[dict], cfg: OnPolicyConfig) -> tuple[list[dict], dict]:
    """The model's wrong steps after optimal prefixes: rows {problem index, prefix_len, response, error_type}."""
    d = lm.domain
    rng = np.random.default_rng([cfg.seed, 7])
    states = []  # (problem index, prefix lines)
    for i, problem in enumerate(problems):
        steps, _, _ = split_response(d.optimal(problem))
        k = int(rng.integers(len(steps))) if steps else 0
        states.append((i, steps[:k]))
    prompts = [lm.encode(d.prompt(problems[i]) + "".join(f"{s}\n" for s in prefix))
               for i, prefix in states for _ in range(cfg.samples)]
    out, _ = lm.sample(prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                       batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens,
                       generator=make_generator(cfg.seed, next(lm.model.parameters()).device))
    rows, seen, counts = [], set(), Counter()
    for r, tokens in enumerate(out.tokens):
        i, prefix = states[r // cfg.samples]
        step = lm.text(tokens).split("\n")[0].strip()
        if not step or step == BACKTRACK or d.claims_goal(step):
            counts["no step"] += 1
            continue
        verdict = d.verify(problems[i], "\n".join([*prefix, step]))
        if verdict.step != len(prefix) or verdict.category in NOT_A_STEP_ERROR:
            counts["legal" if verdict.category in ("not_reached", "correct") else verdict.category + " (not used)"] += 1
            continue
        key = (i, len(prefix), step)
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        counts[verdict.category] += 1
        rows.append({"problem": i, "prefix_len": len(prefix), "error_type": f"onpolicy_{verdict.category}",
                     "response": "".join(f"{s}\n" for s in prefix) + f"{step}\n{BACKTRACK}"})
    stats = {"states": len(states), "samples": len(out.tokens), "rows": len(rows), "outcomes": dict(counts)}
    return rows, stats


def run(cfg: OnPolicyConfig, model_path: str, problems_uri: str, base_uri: str, out_dir: str,
        domain: str = domains.DEFAULT) -> dict[str, str]:
    """Stage entry: `sft.parquet` = the base SFT rows (`base_uri`) plus on-policy D_back rows; manifest with the
    harvest's counts."""
    d = domains.get(domain)
    lm = LM(*load(model_path, device="cuda" if torch.cuda.is_available() else "cpu"), d)
    problems = io.read_parquet(problems_uri)
    problems = problems.slice(0, min(cfg.problems, len(problems)))
    plist = problems.to_pylist()
    rows, stats = harvest(lm, plist, cfg)
    base = io.read_parquet(base_uri)
    new = {"id": pa.array(range(len(base), len(base) + len(rows)), pa.int64()),
           "problem_id": pa.array([plist[r["problem"]]["id"] for r in rows], base.schema.field("problem_id").type)}
    for c in d.columns:
        new[c] = pa.array([plist[r["problem"]][c] for r in rows], base.schema.field(c).type)
    new |= {"prompt": pa.array([d.prompt(plist[r["problem"]]) for r in rows], pa.string()),
            "response": pa.array([r["response"] for r in rows], pa.string()),
            "kind": pa.array(["backtrack"] * len(rows), pa.string()),
            "error_type": pa.array([r["error_type"] for r in rows], pa.string()),
            "prefix_len": pa.array([r["prefix_len"] for r in rows], base.schema.field("prefix_len").type)}
    table = pa.concat_tables([base, pa.table(new, schema=base.schema)])
    uri = io.write_parquet(table, io.join(out_dir, "sft.parquet"))
    stats["base_rows"] = len(base)
    io.write_manifest(out_dir, "onpolicy", {**cfg.model_dump(mode="json"), "model": str(model_path), "domain": domain},
                      [problems_uri, base_uri], {"sft": uri}, stats)
    log.info("on-policy D_back: %d rows from %d states (%s)", len(rows), stats["states"], stats["outcomes"])
    return {"sft": uri}
