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
from sbt_core import domains, io
from sbt_core.config import OnPolicyConfig
from sbt_core.domains import BACKTRACK
from sbt_core.domains.base import split_response
from sbt_core.search.common import LM, FanOut, Shard, make_generator

log = logging.getLogger(__name__)

NOT_A_STEP_ERROR = {"correct", "not_reached", "format_error"}


def harvest(lm: LM, problems: list[dict], cfg: OnPolicyConfig, *, seed: int | None = None,
            first: int = 0) -> tuple[list[dict], dict]:
    """The model's wrong steps after optimal prefixes: rows {problem index, prefix_len, response, error_type}, with
    the counts of every outcome. Prefixes and samples are drawn from `seed` (`cfg.seed` if None); `first`: the
    index of `problems[0]` in the whole set (what a row's `problem` counts from)."""
    d = lm.domain
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng([seed, 7])
    states = []  # (problem index, prefix lines)
    for i, problem in enumerate(problems):
        steps, _, _ = split_response(d.optimal(problem))
        k = int(rng.integers(len(steps))) if steps else 0
        states.append((i, steps[:k]))
    prompts = [lm.encode(d.prompt(problems[i]) + "".join(f"{s}\n" for s in prefix))
               for i, prefix in states for _ in range(cfg.samples)]
    out, _ = lm.sample(prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                       batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens,
                       generator=make_generator(seed, lm.device))
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
        key = (i, len(prefix), step)  # distinct within a problem, so shards of problems dedupe as the whole set
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        counts[verdict.category] += 1
        rows.append({"problem": first + i, "prefix_len": len(prefix), "error_type": f"onpolicy_{verdict.category}",
                     "response": "".join(f"{s}\n" for s in prefix) + f"{step}\n{BACKTRACK}"})
    stats = {"states": len(states), "samples": len(out.tokens), "rows": len(rows), "outcomes": dict(counts)}
    return rows, stats


def shard_uri(out_dir: str, k: int) -> str:
    return io.join(out_dir, "shards", f"shard-{k:05d}.json")


def _problems(cfg: OnPolicyConfig, problems_uri: str) -> pa.Table:
    problems = io.read_parquet(problems_uri)
    return problems.slice(0, min(cfg.problems, len(problems)))


def _harvest_shard(lm: LM, problems: list[dict], cfg: OnPolicyConfig, k: int, out_dir: str) -> dict:
    """Shard k of `problems` (seed `cfg.seed + k`), written to its file and read back (what a gather reads)."""
    first = k * cfg.shard_size
    rows, stats = harvest(lm, problems[first:first + cfg.shard_size], cfg, seed=cfg.seed + k, first=first)
    return io.read_json(io.write_json({"rows": rows, "stats": stats}, shard_uri(out_dir, k)))


def _lm(model_path: str, domain: str, cfg: OnPolicyConfig):
    from sbt_core.search.run import lazy_lm

    return lazy_lm(model_path, domain, inference=cfg.inference())


def missing_shards(cfg: OnPolicyConfig | dict, model_path: str, problems_uri: str, out_dir: str,
                   domain: str = domains.DEFAULT) -> list[Shard]:
    """The shards of this harvest not yet written, as units another process can run (`run_shards`)."""
    cfg = OnPolicyConfig.model_validate(cfg)
    n = len(_problems(cfg, problems_uri))
    args = {"cfg": cfg.model_dump(mode="json"), "model_path": str(model_path), "problems_uri": str(problems_uri),
            "out_dir": str(out_dir), "domain": domain}
    return [Shard(f"shard-{k:05d}", f"{__name__}:run_shards", {**args, "shards": [k]})
            for k in range(-(-n // cfg.shard_size)) if not io.exists(shard_uri(out_dir, k))]


def run_shards(cfg: OnPolicyConfig | dict, model_path: str, problems_uri: str, out_dir: str, *, shards: list[int],
               domain: str = domains.DEFAULT) -> list[str]:
    """Write the given shards of a harvest (those not written yet): what one fanned-out unit runs."""
    cfg = OnPolicyConfig.model_validate(cfg)
    problems, get_lm = _problems(cfg, problems_uri).to_pylist(), _lm(model_path, domain, cfg)
    for k in shards:
        if not io.exists(shard_uri(out_dir, k)):
            _harvest_shard(get_lm(), problems, cfg, k, out_dir)
    get_lm.release()
    return [shard_uri(out_dir, k) for k in shards]


def run(cfg: OnPolicyConfig, model_path: str, problems_uri: str, base_uri: str, out_dir: str,
        domain: str = domains.DEFAULT, fan_out: FanOut | None = None) -> dict[str, str]:
    """Stage entry: `sft.parquet` = the base SFT rows (`base_uri`) plus on-policy D_back rows; manifest with the
    harvest's counts.

    The problems are harvested in shards of `cfg.shard_size` (shard k from seed `cfg.seed + k`), each written to
    `shards/` as it finishes: a killed stage resumes from its last shard, and `fan_out(units)`, if given, runs the
    missing ones elsewhere (see `search.run.run`) while this process only gathers them, loading no model."""
    d = domains.get(domain)
    problems = _problems(cfg, problems_uri)
    plist = problems.to_pylist()
    if fan_out is not None:
        fan_out(missing_shards(cfg, model_path, problems_uri, out_dir, domain))
    get_lm, rows, stats = _lm(model_path, domain, cfg), [], {"states": 0, "samples": 0, "rows": 0}
    outcomes: Counter = Counter()
    for k in range(-(-len(plist) // cfg.shard_size)):
        if io.exists(shard_uri(out_dir, k)):  # finished before a kill, or by a fanned-out unit: keep it
            part = io.read_json(shard_uri(out_dir, k))
        elif fan_out is not None:
            raise RuntimeError(f"{shard_uri(out_dir, k)}: its fanned-out unit completed without writing it")
        else:
            part = _harvest_shard(get_lm(), plist, cfg, k, out_dir)
        rows += part["rows"]
        for name in stats:
            stats[name] += part["stats"][name]
        outcomes.update(part["stats"]["outcomes"])
    get_lm.release()
    stats["outcomes"] = dict(sorted(outcomes.items()))
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
