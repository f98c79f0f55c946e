"""Generate Sudoku puzzles: a random full grid, then clues removed while the solution stays unique.

Splits `train` and `val` (no val puzzle is in train). Columns: `id`, `puzzle` and `solution`
(row-major strings of digits, `0` for a blank), `givens`. Puzzles are made in chunks, each
chunk in a worker process with its own seeds, so the output is the same bytes for any number
of workers.

Run: `sbt generate --domain sudoku --size 9 --out data/sudoku --num-train 100000 --seed 0`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sbt_core.domains.base import write_splits
from sbt_core.domains.sudoku import grid
from sbt_core.domains.sudoku.config import GenerateConfig

SPLITS = ("train", "val")


@dataclass(frozen=True)
class _Job:
    cfg: GenerateConfig
    split: str
    chunk: int
    count: int


def _make_chunk(job: _Job) -> list[tuple[str, str, int]]:
    seeds = np.random.default_rng([job.cfg.seed, SPLITS.index(job.split), job.chunk]).integers(0, 2**32, job.count)
    out = []
    for s in seeds:
        puzzle, solution = grid.make(int(s), job.cfg.size, job.cfg.givens)
        out.append((grid.to_str(puzzle), grid.to_str(solution), int((puzzle > 0).sum())))
    return out


def _split(cfg: GenerateConfig, split: str, count: int, pool, progress) -> list[tuple[str, str, int]]:
    jobs = [_Job(cfg, split, c, min(cfg.chunk_size, count - c * cfg.chunk_size))
            for c in range((count + cfg.chunk_size - 1) // cfg.chunk_size)]
    rows = []
    for part in (pool.imap(_make_chunk, jobs) if pool else map(_make_chunk, jobs)):
        rows += part
        if progress:
            progress(split, len(part))
    return rows


def _table(rows) -> pa.Table:
    return pa.table({
        "id": pa.array(range(len(rows)), pa.int64()),
        "puzzle": pa.array([r[0] for r in rows], pa.string()),
        "solution": pa.array([r[1] for r in rows], pa.string()),
        "givens": pa.array([r[2] for r in rows], pa.int64()),
    })


def generate(cfg: GenerateConfig, progress=None) -> dict[str, pa.Table]:
    grid.make(0, cfg.size, cfg.givens)  # compile (or load the compiled solver) once, before forking
    workers = cfg.workers or os.cpu_count() or 1
    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        train = _split(cfg, "train", cfg.num_train, pool, progress)
        seen = {p for p, _, _ in train}
        # val: new puzzles only. Draw extra, drop those in train (small grids repeat), cut.
        extra = max(16, cfg.num_val // 2) if cfg.size < 9 else max(4, cfg.num_val // 100)
        val = [r for r in _split(cfg, "val", cfg.num_val + extra, pool, progress) if r[0] not in seen]
        val = list({r[0]: r for r in val}.values())[: cfg.num_val]
    finally:
        if pool:
            pool.close()
            pool.join()
    if len(val) < cfg.num_val:
        raise ValueError(f"only {len(val)} of {cfg.num_val} val puzzles differ from train at size {cfg.size}: "
                         "lower num_val or raise givens")
    return {"train": _table(train), "val": _table(val)}


def run(cfg: GenerateConfig, out_dir: str, progress=None) -> dict[str, str]:
    """Stage entry: write `train.parquet`, `val.parquet` and the manifest; return their URIs."""
    return write_splits(generate(cfg, progress), cfg, out_dir)
