"""Build the self-backtracking training set D = D_op ∪ D_back from generated problems.

D_op: each problem's optimal path. D_back (Self-Backtracking, arXiv 2502.04404): a prefix of
the optimal path of random length (0 to len-1 steps), one erroneous step, then `<backtrack>`.
The erroneous step is one of three types (default ratio 1:2:2):

- exploration: a legal step with correct arithmetic after which the target can no longer be
  reached with the remaining numbers (checked with the exhaustive solver);
- computational: two available numbers, a wrong result;
- rule_violation: a number that is not available (absent, or one copy used twice), with
  correct arithmetic, like the rows visible in the paper's released dataset.

`computational_at_target` (default 0, the paper's data) turns that share of the computational
errors into the failure a small model actually makes: the last step, with wrong arithmetic whose
result is the target (`47*2=100`), then `<backtrack>`. The erroneous step stays masked.

Run: `sbt build-data --data data/countdown --out data/sft`.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from sbt_core import io
from sbt_core.config import BuildDataConfig
from sbt_core.countdown.format import Step, format_backtrack, parse_step, solution_steps
from sbt_core.countdown.solver import apply_step, legal_steps, reachable

log = logging.getLogger(__name__)
ERROR_TYPES = ("exploration", "computational", "rule_violation")


def _exploration(pool: list[int], target: int, rng) -> Step | None:
    dead_ends = [s for s in legal_steps(pool) if not reachable(apply_step(pool, s), target)]
    return dead_ends[rng.integers(len(dead_ends))] if dead_ends else None


def _computational(pool: list[int], target: int, rng) -> Step | None:
    steps = legal_steps(pool)
    if not steps:
        return None
    s = steps[rng.integers(len(steps))]
    deltas = [d for d in range(-10, 11) if d != 0 and s.result + d >= 0]
    return Step(s.a, s.op, s.b, s.result + deltas[rng.integers(len(deltas))])


def _rule_violation(pool: list[int], target: int, rng, number_max: int) -> Step | None:
    counts = Counter(pool)
    singles = [n for n, c in counts.items() if c == 1]
    if singles and rng.random() < 0.25:  # one copy used twice
        a = b = singles[rng.integers(len(singles))]
    else:  # a number that is not in the pool
        a = pool[rng.integers(len(pool))]
        absent = [n for n in range(1, number_max + 1) if n not in counts]
        b = absent[rng.integers(len(absent))]
        if rng.random() < 0.5:
            a, b = b, a
    # Correct arithmetic, so that the only fault is the rule.
    options = [Step(a, "+", b, a + b), Step(a, "*", b, a * b)]
    if a >= b:
        options.append(Step(a, "-", b, a - b))
    if b > 0 and a % b == 0:
        options.append(Step(a, "/", b, a // b))
    return options[rng.integers(len(options))]


def _at_target(pool: list[int], target: int, rng) -> Step | None:
    """A step over the pool whose arithmetic is bent so that it lands on the target."""
    steps = [s for s in legal_steps(pool) if s.result != target]
    if not steps:
        return None
    s = steps[rng.integers(len(steps))]
    return Step(s.a, s.op, s.b, target)


def _pool_after(nums: list[int], steps: list[Step]) -> list[int]:
    pool = sorted(nums)
    for s in steps:
        pool = apply_step(pool, s)
    return pool


def backtrack_example(nums: list[int], target: int, steps: list[Step], error_type: str, rng, number_max: int = 99,
                      at_target: bool = False):
    """(response, error type actually used, prefix length) for one D_back row.

    `at_target` (computational errors only): the error is the last step, bent onto the target.
    """
    if error_type == "computational" and at_target:
        err = _at_target(_pool_after(nums, steps[:-1]), target, rng)
        if err is not None:
            return format_backtrack(steps[:-1], str(err)), "computational", len(steps) - 1
    prefix_len = int(rng.integers(len(steps)))
    pool = _pool_after(nums, steps[:prefix_len])
    makers = {
        "exploration": lambda: _exploration(pool, target, rng),
        "computational": lambda: _computational(pool, target, rng),
        "rule_violation": lambda: _rule_violation(pool, target, rng, number_max),
    }
    # When a type has no instance here (say, every legal step still reaches the target),
    # fall back to the next type, recording the type actually used.
    for kind in ERROR_TYPES[ERROR_TYPES.index(error_type) :] + ERROR_TYPES:
        err = makers[kind]()
        if err is not None:
            return format_backtrack(steps[:prefix_len], str(err)), kind, prefix_len
    raise ValueError(f"no erroneous step possible for {nums} -> {target}")


def build(problems: pa.Table, cfg: BuildDataConfig) -> pa.Table:
    """Rows (problem_id, nums, target, response, kind, error_type, prefix_len)."""
    rng = np.random.default_rng([cfg.seed, 2])
    weights = np.asarray(cfg.error_type_ratio, dtype=float)
    weights /= weights.sum()
    all_nums = problems["nums"].to_pylist()
    number_max = max((max(n) for n in all_nums), default=99)
    rows = {k: [] for k in ("problem_id", "nums", "target", "response", "kind", "error_type", "prefix_len")}

    def add(pid, nums, target, response, kind, error_type, prefix_len):
        for k, v in zip(rows, (pid, nums, target, response, kind, error_type, prefix_len)):
            rows[k].append(v)

    for pid, nums, target, solution in zip(
        problems["id"].to_pylist(), all_nums, problems["target"].to_pylist(), problems["solution"].to_pylist()
    ):
        steps = [parse_step(line) for line in solution_steps(solution)]
        add(pid, nums, target, solution, "optimal", None, len(steps))
        n_back = int(cfg.backtrack_per_optimal) + int(rng.random() < cfg.backtrack_per_optimal % 1)
        for _ in range(n_back):
            kind = ERROR_TYPES[rng.choice(3, p=weights)]
            # Drawn only when asked for, so the paper's data (share 0) keeps its bytes.
            at_target = kind == "computational" and cfg.computational_at_target > 0 and (
                rng.random() < cfg.computational_at_target)
            response, used, prefix_len = backtrack_example(nums, target, steps, kind, rng, number_max, at_target)
            add(pid, nums, target, response, "backtrack", used, prefix_len)
    return pa.table(
        {
            "id": pa.array(range(len(rows["kind"])), pa.int64()),
            "problem_id": pa.array(rows["problem_id"], pa.int64()),
            "nums": pa.array(rows["nums"], pa.list_(pa.int64())),
            "target": pa.array(rows["target"], pa.int64()),
            "response": pa.array(rows["response"], pa.string()),
            "kind": pa.array(rows["kind"], pa.string()),
            "error_type": pa.array(rows["error_type"], pa.string()),
            "prefix_len": pa.array(rows["prefix_len"], pa.int64()),
        }
    )


def run(cfg: BuildDataConfig, problems_uri: str, out_dir: str) -> dict[str, str]:
    """Stage entry: read the train problems, write `sft.parquet` and the manifest."""
    table = build(io.read_parquet(problems_uri), cfg)
    uri = io.write_parquet(table, io.join(out_dir, "sft.parquet"))
    io.write_manifest(out_dir, "build_data", cfg.model_dump(mode="json"), [problems_uri], {"sft": uri})
    log.info("build-data: %d rows", len(table))
    return {"sft": uri}
