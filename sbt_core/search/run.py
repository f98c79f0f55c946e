"""Search stage: run one decoder over a split of problems; Parquet in, Parquet out.

Problems are processed in shards; each finished shard is written (atomically) before the
next starts and has its own seed, so a killed search resumes from its last finished shard
and gives the same bytes as an uninterrupted run.

Run: `sbt search --model runs/sft/model --data data/countdown/val_new.parquet --out runs/search`.
"""

from __future__ import annotations

import importlib
import logging
import time

import pyarrow as pa
import torch

from sbt_core import domains, io
from sbt_core.config import SearchConfig
from sbt_core.domains import Domain
from sbt_core.models import load
from sbt_core.search import backtrack, decoders, reference, registry  # noqa: F401 (the registry's entries)
from sbt_core.search.common import LM, Result, make_generator

log = logging.getLogger(__name__)


def _function(entry: str):
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


# name -> decoder function, resolved from `registry.DECODERS` (whose modules are imported above, so they
# are in this stage's code fingerprint).
DECODERS = {name: _function(d.entry) for name, d in registry.DECODERS.items()}

# After `id` and the domain's problem columns (`results_schema`):
RESULT_FIELDS = pa.schema(
    [
        ("output", pa.string()),
        ("claims_goal", pa.bool_()),
        ("correct_strict", pa.bool_()),
        ("category_strict", pa.string()),
        ("correct_paper", pa.bool_()),
        ("category_paper", pa.string()),
        ("candidates", pa.list_(pa.struct([("response", pa.string()), ("score", pa.float64()),
                                            ("value", pa.float64())]))),
        ("generated_tokens", pa.int64()),
        ("forward_passes", pa.int64()),
        ("rounds", pa.int64()),
        ("seconds", pa.float64()),
    ]
)


def results_schema(problems: pa.Schema, domain: Domain) -> pa.Schema:
    """id, the problem columns as the problems table types them, then RESULT_FIELDS."""
    return pa.schema([problems.field("id"), *(problems.field(c) for c in domain.columns), *RESULT_FIELDS])


def search(lm: LM, problems: list[dict], cfg: SearchConfig, seed: int | None = None) -> list[Result]:
    """Run the configured decoder on problems (dicts of `lm.domain`'s columns), in memory."""
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)  # HF generate (beam, reference) draws from the global generator
    return DECODERS[cfg.decoder](lm, problems, cfg, make_generator(seed, next(lm.model.parameters()).device))


def results_table(problems: pa.Table, results: list[Result], seconds: float, domain: Domain) -> pa.Table:
    """One row per problem with both verifier modes' verdicts."""
    rows = problems.to_pylist()
    strict = [domain.verify(p, r.output, strict=True) for p, r in zip(rows, results)]
    paper = [domain.verify(p, r.output, strict=False) for p, r in zip(rows, results)]
    per = seconds / max(1, len(results))
    return pa.table(
        {
            "id": problems["id"],
            **{c: problems[c] for c in domain.columns},
            "output": [r.output for r in results],
            "claims_goal": [domain.claims_goal(r.output) for r in results],
            "correct_strict": [v.correct for v in strict],
            "category_strict": [v.category for v in strict],
            "correct_paper": [v.correct for v in paper],
            "category_paper": [v.category for v in paper],
            "candidates": [r.candidates for r in results],
            "generated_tokens": [r.generated_tokens for r in results],
            "forward_passes": [r.forward_passes for r in results],
            "rounds": [r.rounds for r in results],
            "seconds": [per] * len(results),
        },
        schema=results_schema(problems.schema, domain),
    )


def run(
    cfg: SearchConfig, model_path: str, data_uri: str, out_dir: str, *, domain: str = domains.DEFAULT,
    limit: int | None = None, shard_size: int = 256, lm: LM | None = None, progress=None,
) -> dict[str, str]:
    """Stage entry: writes `results.parquet` (+ shards/ and the manifest); returns its URI."""
    problems = io.read_parquet(data_uri)
    if limit is not None:
        problems = problems.slice(0, limit)
    lm = lm or LM(*load(model_path, device="cuda" if torch.cuda.is_available() else "cpu"), domain)
    parts, cuts = [], (0, 0)  # continuations stopped by max_new_tokens, of those sampled (this attempt's shards)
    for k, start in enumerate(range(0, len(problems), shard_size)):
        shard_uri = io.join(out_dir, "shards", f"shard-{k:05d}.parquet")
        if io.exists(shard_uri):  # finished before a kill: keep it
            parts.append(io.read_parquet(shard_uri))
        else:
            chunk = problems.slice(start, shard_size)
            t0, sampled, cut = time.perf_counter(), lm.sampled, lm.cut
            res = search(lm, chunk.select(list(lm.domain.columns)).to_pylist(), cfg, seed=cfg.seed + k)
            table = results_table(chunk, res, time.perf_counter() - t0, lm.domain)
            cuts = (cuts[0] + lm.cut - cut, cuts[1] + lm.sampled - sampled)
            io.write_parquet(table, shard_uri)
            parts.append(table)
        if progress:
            progress(len(parts[-1]))
    if cuts[0]:
        log.warning("search %s on %s: %d of %d continuations stopped at max_new_tokens=%d, not at EOS or "
                    "<backtrack>: their answers are cut (raise max_new_tokens)", cfg.decoder, io.basename(data_uri),
                    cuts[0], cuts[1], cfg.max_new_tokens)
    table = pa.concat_tables(parts) if parts else results_table(problems.slice(0, 0), [], 0.0, lm.domain)
    uri = io.write_parquet(table, io.join(out_dir, "results.parquet"))
    config = {"search": cfg.model_dump(mode="json"), "model": str(model_path), "domain": lm.domain.name,
              "limit": limit, "shard_size": shard_size}
    io.write_manifest(out_dir, "search", config, [data_uri], {"results": uri})
    return {"results": uri}
