"""Generate Countdown problems with their optimal paths: train, val_seen and val_new.

As in Stream of Search's generator (kanishkg/stream-of-search): a share of the targets is
held out for `val_new`; for each problem a target is drawn uniformly, then numbers are
drawn uniformly until the exhaustive solver finds a solution (rejection sampling). Here the
rejection runs vectorised (`solver.solve_batch`) over chunks of problems, chunks run in
worker processes, and each chunk has its own seed, so the output is the same bytes for any
number of workers (the chunk size is part of the config).

Run: `sbt generate --out data/countdown --num-train 500000 --seed 0`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sbt_core.domains.base import write_splits
from sbt_core.domains.countdown.config import GenerateConfig
from sbt_core.domains.countdown.format import format_solution
from sbt_core.domains.countdown.solver import decode_program, pick_programs, solve_batch

SPLITS = ("train", "val_seen", "val_new")
_CANDIDATES_PER_SLOT = 4
_SOLVE_ROWS = 2048
_VAL_SEEN_DRAWS = 20  # val_seen draws at most 20x the problems asked for before it gives up
_MAX_STALLED_ROUNDS = 500  # rounds in a row with no slot filled (2,000 draws per target) before giving up


@dataclass(frozen=True)
class _Job:
    cfg: GenerateConfig
    split: str
    targets: tuple[int, ...]
    chunk: int
    count: int


def split_targets(cfg: GenerateConfig) -> tuple[list[int], list[int]]:
    """(seen targets, held-out targets), drawn with the seed."""
    targets = np.arange(cfg.target_min, cfg.target_max + 1)
    rng = np.random.default_rng([cfg.seed, 1_000])
    n_held = int(round(len(targets) * cfg.held_out_fraction))
    held = set(rng.choice(targets, size=n_held, replace=False).tolist()) if n_held else set()
    return [int(t) for t in targets if t not in held], sorted(int(t) for t in held)


def _solve_chunk(job: _Job) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`job.count` solvable problems with targets drawn uniformly from `job.targets`."""
    cfg = job.cfg
    rng = np.random.default_rng([cfg.seed, SPLITS.index(job.split), job.chunk])
    dtype = np.int32 if cfg.number_max**cfg.num_numbers * max(cfg.target_max, 1) < 2**31 else np.int64
    targets = rng.choice(np.asarray(job.targets, dtype=dtype), size=job.count)
    nums = np.zeros((job.count, cfg.num_numbers), dtype=dtype)
    programs = np.full(job.count, -1, dtype=np.int64)
    todo, stalled = np.arange(job.count), 0
    while len(todo):
        k = _CANDIDATES_PER_SLOT
        cand = rng.integers(cfg.number_min, cfg.number_max + 1, size=(len(todo), k, cfg.num_numbers), dtype=dtype)
        flat, flat_t = cand.reshape(-1, cfg.num_numbers), np.repeat(targets[todo], k)
        for s in range(0, len(flat), _SOLVE_ROWS):
            hits = solve_batch(flat[s : s + _SOLVE_ROWS], flat_t[s : s + _SOLVE_ROWS])
            rows = np.nonzero(hits.any(axis=1))[0]
            slots = todo[(s + rows) // k]
            # The first solvable candidate of a slot wins; pick a path only for those.
            first = np.unique(slots, return_index=True)[1]
            rows, slots = rows[first], slots[first]
            fresh = programs[slots] < 0
            rows, slots = rows[fresh], slots[fresh]
            programs[slots] = pick_programs(hits[rows], rng)
            nums[slots] = flat[s + rows]
        left = todo[programs[todo] < 0]
        stalled = stalled + 1 if len(left) == len(todo) else 0
        if stalled >= _MAX_STALLED_ROUNDS:  # some target no draw of these numbers reaches: say so, do not spin
            hard = sorted({int(t) for t in targets[left]})
            raise ValueError(f"no solvable problem found for target(s) {hard[:10]} in {stalled * k} draws of "
                             f"{cfg.num_numbers} numbers in [{cfg.number_min}, {cfg.number_max}] each: widen the "
                             "numbers or narrow the targets")
        todo = left
    solutions = [format_solution(decode_program(n.tolist(), int(p))) for n, p in zip(nums, programs)]
    return nums.astype(np.int64), targets.astype(np.int64), solutions


def _generate_split(cfg: GenerateConfig, split: str, targets: list[int], count: int, pool, progress,
                    first_chunk: int = 0) -> pa.Table:
    """`count` problems of `split` in chunks of `cfg.chunk_size`, chunk c seeded by its number `first_chunk + c`
    (a later draw of the same split starts after the chunks already used, so it draws other problems)."""
    jobs = [
        _Job(cfg, split, tuple(targets), first_chunk + c, min(cfg.chunk_size, count - c * cfg.chunk_size))
        for c in range((count + cfg.chunk_size - 1) // cfg.chunk_size)
    ]
    parts = []
    for part in (pool.imap(_solve_chunk, jobs) if pool else map(_solve_chunk, jobs)):
        parts.append(part)
        if progress:
            progress(split, len(part[0]))
    nums = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, cfg.num_numbers), np.int64)
    tgts = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    sols = [s for p in parts for s in p[2]]
    return pa.table(
        {
            "id": pa.array(np.arange(len(tgts)), pa.int64()),
            "nums": pa.array(nums.tolist(), pa.list_(pa.int64())),
            "target": pa.array(tgts, pa.int64()),
            "solution": pa.array(sols, pa.string()),
        }
    )


def _keys(table: pa.Table) -> list[tuple]:
    """Each row's problem identity: its numbers as a multiset and its target."""
    return [(tuple(sorted(n)), t) for n, t in zip(table["nums"].to_pylist(), table["target"].to_pylist())]


def problem_keys(table: pa.Table) -> set[tuple]:
    """The table's problems, by identity (`_keys`)."""
    return set(_keys(table))


def _val_seen(cfg: GenerateConfig, seen: list[int], in_train: set[tuple], pool, progress) -> pa.Table:
    """`cfg.num_val_seen` problems with seen targets that are not in train: draw 10% extra, drop collisions with
    train, and while short draw again (later chunks: other problems) as many as the hit rate so far says, up to
    `_VAL_SEEN_DRAWS` times the count asked for; then say the seen targets' problems are used up."""
    want, parts, kept, drawn, chunk = cfg.num_val_seen, [], 0, 0, 0
    count = want + max(16, want // 10)
    while kept < want:
        table = _generate_split(cfg, "val_seen", seen, count, pool, progress if not parts else None, chunk)
        chunk += -(-count // cfg.chunk_size)
        drawn += count
        keep = [i for i, key in enumerate(_keys(table)) if key not in in_train][: want - kept]
        parts.append(table.take(pa.array(keep, pa.int64())))
        kept += len(keep)
        if kept < want and drawn >= _VAL_SEEN_DRAWS * want:  # the seen targets' problem space is used up by train
            raise ValueError(
                f"num_val_seen: {want} problems with seen targets that are not in train were asked for, {kept} "
                f"found in {drawn} draws; train's {cfg.num_train} rows hold {len(in_train)} distinct problems of "
                f"{cfg.num_numbers} numbers in [{cfg.number_min}, {cfg.number_max}] with targets "
                f"{cfg.target_min}-{cfg.target_max}: lower num_val_seen or num_train, or widen the numbers or "
                "targets")
        count = min(_VAL_SEEN_DRAWS * want - drawn, max(16, int(1.2 * (want - kept) * drawn / max(kept, 1))))
    table = pa.concat_tables(parts)
    return table.set_column(0, "id", pa.array(np.arange(len(table)), pa.int64()))


def generate(cfg: GenerateConfig, progress=None) -> dict[str, pa.Table]:
    """All three splits as Arrow tables (columns id, nums, target, solution)."""
    seen, held = split_targets(cfg)
    if not seen:
        raise ValueError("held_out_fraction leaves no seen targets")
    if cfg.num_val_new and not held:
        raise ValueError("num_val_new > 0 needs held-out targets (held_out_fraction > 0)")
    workers = cfg.workers or os.cpu_count() or 1
    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        train = _generate_split(cfg, "train", seen, cfg.num_train, pool, progress)
        val_seen = _val_seen(cfg, seen, problem_keys(train), pool, progress) if cfg.num_val_seen else train.slice(0, 0)
        val_new = _generate_split(cfg, "val_new", held, cfg.num_val_new, pool, progress) if held else train.slice(0, 0)
    finally:
        if pool:
            pool.close()
            pool.join()
    return {"train": train, "val_seen": val_seen, "val_new": val_new}


def run(cfg: GenerateConfig, out_dir: str, progress=None) -> dict[str, str]:
    """Stage entry: write `train/val_seen/val_new.parquet` and the manifest; return their URIs."""
    return write_splits(generate(cfg, progress), cfg, out_dir)
