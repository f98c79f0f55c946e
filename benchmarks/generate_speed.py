"""Generator speed: problems with optimal paths per second, against a per-problem DFS baseline.

The baseline is a plain recursive search per problem (the shape of Stream-of-Search's
generator), run on a small sample in the same process; ours is the full vectorised,
multiprocess generator. Prints both rates and `ratio: X` (ours over the baseline).

    python benchmarks/generate_speed.py [--num-train 500000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from sbt_core.config import GenerateConfig
from sbt_core.countdown import generate
from sbt_core.countdown import solver
from sbt_core.countdown.solver import reachable


def baseline_rate(seconds: float = 10.0) -> float:
    """Problems/s of rejection sampling with a per-problem recursive solver (no cache reuse)."""
    rng = np.random.default_rng(0)
    made, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        target = int(rng.integers(10, 101))
        while True:
            nums = rng.integers(1, 100, size=4).tolist()
            solver._reachable.cache_clear()  # a fresh search per candidate, as a per-problem DFS does
            if reachable(nums, target):
                made += 1
                break
    return made / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-train", type=int, default=500_000)
    args = ap.parse_args()
    base = baseline_rate()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate.run(GenerateConfig(num_train=args.num_train), tmp)
        seconds = time.perf_counter() - t0
    ours = (args.num_train + 2000) / seconds
    print(f"baseline (per-problem recursive search, 1 core): {base:8.0f} problems/s")
    print(f"ours ({os.cpu_count()} cores): {args.num_train} train + 2000 val problems in {seconds:.1f} s = {ours:8.0f} problems/s")
    print(f"ratio: {ours / base:.1f}")


if __name__ == "__main__":
    main()
