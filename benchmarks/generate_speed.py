"""Generator speed: problems (with solutions) per second, against a plain per-problem baseline.

Countdown: the baseline is rejection sampling with a plain recursive search per candidate (the
shape of Stream-of-Search's generator); ours is the vectorised, multiprocess generator.
Sudoku: the baseline digs clues with the same algorithm in plain Python (solutions counted up to
2 after each removal, fewest candidates first); ours is the compiled (numba) generator on every
core. Both baselines run on
one core, for a few seconds, in the same process. Prints both rates and `ratio: X` (ours over the
baseline).

    python benchmarks/generate_speed.py [--num-train 500000]
    python benchmarks/generate_speed.py --domain sudoku --size 9 --num-train 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from sbt_core import domains


def _countdown_reachable(pool: list[int], target: int) -> bool:
    if len(pool) == 1:
        return pool[0] == target
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
            rest = [pool[k] for k in range(len(pool)) if k not in (i, j)]
            outs = [a + b, a * b, a - b] + ([a // b] if b and a % b == 0 else [])
            if any(_countdown_reachable(rest + [r], target) for r in outs):
                return True
    return False


def countdown_baseline(seconds: float) -> float:
    rng = np.random.default_rng(0)
    made, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        target = int(rng.integers(10, 101))
        while not _countdown_reachable(rng.integers(1, 100, size=4).tolist(), target):
            pass
        made += 1
    return made / (time.perf_counter() - t0)


def _sudoku_count(grid: list[int], n: int, box: tuple[int, int], limit: int) -> int:
    """Solutions up to `limit`: the generator's algorithm (fewest candidates first) in plain Python."""
    best, best_vals = -1, None
    for i in range(n * n):
        if grid[i] == 0:
            r, c = divmod(i, n)
            r0, c0 = r - r % box[0], c - c % box[1]
            used = {grid[r * n + k] for k in range(n)} | {grid[k * n + c] for k in range(n)} | {
                grid[(r0 + a) * n + c0 + b] for a in range(box[0]) for b in range(box[1])}
            vals = [v for v in range(1, n + 1) if v not in used]
            if best_vals is None or len(vals) < len(best_vals):
                best, best_vals = i, vals
                if len(vals) <= 1:
                    break
    if best < 0:
        return 1
    found = 0
    for v in best_vals:
        grid[best] = v
        found += _sudoku_count(grid, n, box, limit - found)
        grid[best] = 0
        if found >= limit:
            break
    return found


def sudoku_baseline(seconds: float, size: int, solution_source) -> float:
    """Dig each of a stream of full grids (taken from our generator, so only the digging is timed) with the
    plain solver: the part that dominates generation."""
    boxes = {4: (2, 2), 6: (2, 3), 9: (3, 3)}
    rng = np.random.default_rng(0)
    made, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        puzzle = solution_source(made)
        for i in rng.permutation(size * size):
            v, puzzle[i] = puzzle[i], 0
            if _sudoku_count(list(puzzle), size, boxes[size], 2) != 1:
                puzzle[i] = v
        made += 1
    return made / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", default="countdown", choices=sorted(domains.DOMAINS))
    ap.add_argument("--num-train", type=int, default=None)
    ap.add_argument("--size", type=int, default=9, help="Sudoku grid size")
    ap.add_argument("--baseline-seconds", type=float, default=10.0)
    args = ap.parse_args()
    d = domains.get(args.domain)
    if args.domain == "sudoku":
        cfg = d.GenerateConfig(size=args.size, num_val=1000, **({"num_train": args.num_train} if args.num_train else {}))
        with tempfile.TemporaryDirectory() as tmp:  # full grids for the baseline: a small run of ours
            small = d.GenerateConfig(size=args.size, num_train=64, num_val=0, workers=1)
            d.generate(small, tmp)
            import pyarrow.parquet as pq

            sols = pq.read_table(f"{tmp}/train.parquet")["solution"].to_pylist()
        base = sudoku_baseline(args.baseline_seconds, args.size, lambda k: [int(ch) for ch in sols[k % len(sols)]])
        what = f"{args.size}x{args.size} puzzles"
    else:
        cfg = d.GenerateConfig(**({"num_train": args.num_train} if args.num_train else {}))
        base = countdown_baseline(args.baseline_seconds)
        what = "problems"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        d.generate(cfg, tmp)
        seconds = time.perf_counter() - t0
    ours = cfg.total / seconds
    print(f"baseline (plain per-problem search in Python, 1 core): {base:10.1f} {what}/s")
    print(f"ours ({os.cpu_count()} cores): {cfg.total} {what} in {seconds:.1f} s = {ours:10.1f} {what}/s")
    print(f"ratio: {ours / base:.1f}")


if __name__ == "__main__":
    main()
