"""Search stage: run one decoder over a split of problems; Parquet in, Parquet out.

Problems are processed in shards of `cfg.shard_size`; each finished shard is written (atomically) and
has its own seed, so a killed search resumes from its last finished shard and gives the same bytes as
an uninterrupted run, and the shards can run at once on other workers (`fan_out`, `run_shards`).

Run: `sbt search --model runs/sft/model --data data/countdown/val_new.parquet --out runs/search`.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Callable

import pyarrow as pa
import torch

from sbt_core import domains, io
from sbt_core.config import SearchConfig
from sbt_core.domains import Domain
from sbt_core.domains import BACKTRACK
from sbt_core.models import load, load_tokenizer, model_folder
from sbt_core.search import backtrack, decoders, engines, reference, registry  # noqa: F401 (the registry's entries)
from sbt_core.search.common import LM, FanOut, Result, Shard, make_generator

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
    return DECODERS[cfg.decoder](lm, problems, cfg, make_generator(seed, lm.device))


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


def shard_uri(out_dir: str, k: int) -> str:
    return io.join(out_dir, "shards", f"shard-{k:05d}.parquet")


def _problems(data_uri: str, limit: int | None) -> pa.Table:
    problems = io.read_parquet(data_uri)
    return problems if limit is None else problems.slice(0, limit)


def _search_shard(lm: LM, problems: pa.Table, cfg: SearchConfig, k: int, out_dir: str) -> pa.Table:
    """Shard k of `problems` (seed `cfg.seed + k`), written to its file."""
    chunk = problems.slice(k * cfg.shard_size, cfg.shard_size)
    t0 = time.perf_counter()
    res = search(lm, chunk.select(list(lm.domain.columns)).to_pylist(), cfg, seed=cfg.seed + k)
    table = results_table(chunk, res, time.perf_counter() - t0, lm.domain)
    io.write_parquet(table, shard_uri(out_dir, k))
    return table


def _warn_cut(cfg: SearchConfig, data_uri: str, cut: int, sampled: int) -> None:
    if cut:
        log.warning("search %s on %s: %d of %d continuations stopped at max_new_tokens=%d, not at EOS or "
                    "<backtrack>: their answers are cut (raise max_new_tokens)", cfg.decoder, io.basename(data_uri),
                    cut, sampled, cfg.max_new_tokens)


def lazy_lm(model_path: str, domain: str, lm: LM | Callable[[], LM] | None = None,
            inference: dict | None = None) -> Callable[[], LM]:
    """The model, loaded on first use (a search whose shards are all written loads nothing); `lm`: one
    already loaded, or such a loader (returned as it is). `inference`: `InferenceConfig.inference()` (the
    engine, the dtype, vLLM's memory share); None: the HF engine at the device's `auto` dtype."""
    if isinstance(lm, LM):
        return lambda: lm
    if lm is not None:
        return lm
    inference = {"engine": "hf", "dtype": "auto", "gpu_memory_utilization": 0.85, **(inference or {})}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = engines.inference_dtype(inference["dtype"], device)
    if inference["engine"] == "hf":
        return Loader(lambda: LM(*load(model_path, dtype=dtype, device=device), domain))

    def with_engine() -> LM:
        from transformers import AutoConfig

        path = model_folder(model_path)
        tokenizer, grew = load_tokenizer(path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if grew or config.vocab_size < len(tokenizer):
            raise ValueError(f"engine: {inference['engine']} needs a model whose vocabulary has {BACKTRACK} (one "
                             f"saved by `sbt train`); {path} has {config.vocab_size} embeddings for a tokenizer of "
                             f"{len(tokenizer)}: use engine: hf, which resizes them")
        engine = engines.VLLMEngine(str(path), dtype=inference["dtype"],
                                    gpu_memory_utilization=inference["gpu_memory_utilization"])
        return LM(lambda: load(path, dtype=dtype, device=device)[0], tokenizer, domain, engine=engine,
                  model_config=config)

    return Loader(with_engine)


class Loader:
    """An LM made on first call and kept; `release` drops it (closing its engine), so that the next stage in this
    process finds the device free. Loaders given by a caller (`lazy_lm`'s `lm`) are the caller's to release."""

    def __init__(self, make: Callable[[], LM]):
        self._make, self._lm = make, None

    def __call__(self) -> LM:
        if self._lm is None:
            self._lm = self._make()
        return self._lm

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def release(self) -> None:
        if self._lm is not None:
            self._lm.close_engine()
            self._lm = None


def release(get_lm: Callable[[], LM]) -> None:
    """Release what `lazy_lm` made (nothing for an LM or loader the caller passed in)."""
    if isinstance(get_lm, Loader):
        get_lm.release()


def missing_shards(cfg: SearchConfig, model_path: str, data_uri: str, out_dir: str, *,
                   domain: str = domains.DEFAULT, limit: int | None = None) -> list[Shard]:
    """The shards of this search not yet written, as units another process can run (`run_shards`)."""
    n = len(_problems(data_uri, limit))
    args = {"cfg": cfg.model_dump(mode="json"), "model_path": str(model_path), "data_uri": str(data_uri),
            "out_dir": str(out_dir), "domain": domain, "limit": limit}
    return [Shard(f"shard-{k:05d}", f"{__name__}:run_shards", {**args, "shards": [k]})
            for k in range(-(-n // cfg.shard_size)) if not io.exists(shard_uri(out_dir, k))]


def run_shards(cfg: SearchConfig | dict, model_path: str, data_uri: str, out_dir: str, *, shards: list[int],
               domain: str = domains.DEFAULT, limit: int | None = None, lm: LM | None = None) -> list[str]:
    """Write the given shards of a search (those not written yet): what one fanned-out unit runs."""
    cfg = SearchConfig.model_validate(cfg)
    problems, get_lm, uris = _problems(data_uri, limit), lazy_lm(model_path, domain, lm, cfg.inference()), []
    before = None
    for k in shards:
        if not io.exists(shard_uri(out_dir, k)):
            before = before or (get_lm().cut, get_lm().sampled)
            _search_shard(get_lm(), problems, cfg, k, out_dir)
        uris.append(shard_uri(out_dir, k))
    if before:
        _warn_cut(cfg, data_uri, get_lm().cut - before[0], get_lm().sampled - before[1])
    if lm is None:
        release(get_lm)
    return uris


def run(
    cfg: SearchConfig, model_path: str, data_uri: str, out_dir: str, *, domain: str = domains.DEFAULT,
    limit: int | None = None, lm: LM | Callable[[], LM] | None = None, progress=None, fan_out: FanOut | None = None,
) -> dict[str, str]:
    """Stage entry: writes `results.parquet` (+ shards/ and the manifest); returns its URI.

    Shard k holds problems [k * cfg.shard_size, (k + 1) * cfg.shard_size) searched with seed `cfg.seed + k`,
    so its bytes do not depend on where or when it runs. `fan_out(units)`, if given, runs the missing
    shards elsewhere (all at once, across workers) and returns once every one is written; this process
    then only gathers them. Without it, they run here in order.
    """
    problems = _problems(data_uri, limit)
    if fan_out is not None:
        fan_out(missing_shards(cfg, model_path, data_uri, out_dir, domain=domain, limit=limit))
    get_lm, parts, cuts = lazy_lm(model_path, domain, lm, cfg.inference()), [], None
    for k in range(-(-len(problems) // cfg.shard_size)):
        if io.exists(shard_uri(out_dir, k)):  # finished before a kill, or by a fanned-out unit: keep it
            parts.append(io.read_parquet(shard_uri(out_dir, k)))
        elif fan_out is not None:
            raise RuntimeError(f"{shard_uri(out_dir, k)}: its fanned-out unit completed without writing it")
        else:
            cuts = cuts or (get_lm().cut, get_lm().sampled)
            parts.append(_search_shard(get_lm(), problems, cfg, k, out_dir))
        if progress:
            progress(len(parts[-1]))
    if cuts:
        _warn_cut(cfg, data_uri, get_lm().cut - cuts[0], get_lm().sampled - cuts[1])
    if lm is None:
        release(get_lm)
    table = pa.concat_tables(parts) if parts else _empty(problems, domain)
    uri = io.write_parquet(table, io.join(out_dir, "results.parquet"))
    config = {"search": cfg.model_dump(mode="json"), "model": str(model_path), "domain": domain, "limit": limit}
    io.write_manifest(out_dir, "search", config, [data_uri], {"results": uri})
    return {"results": uri}


def _empty(problems: pa.Table, domain: str) -> pa.Table:
    return results_table(problems.slice(0, 0), [], 0.0, domains.get(domain))
