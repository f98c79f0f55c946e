"""Countdown's D_back rows (Self-Backtracking, arXiv 2502.04404): a prefix of the optimal path of
random length (0 to len-1 steps), one erroneous step, then `<backtrack>`. The erroneous step is one
of three types:

- exploration: a legal step with correct arithmetic after which the target can no longer be
  reached with the remaining numbers (checked with the exhaustive solver);
- computational: two available numbers, a wrong result;
- rule_violation: a number that is not available (absent, or one copy used twice), with
  correct arithmetic, like the rows visible in the paper's released dataset.

`at_target` turns a computational error into the failure a small model actually makes: the last
step, with wrong arithmetic whose result is the target (`47*2=100`), then `<backtrack>`.
"""

from __future__ import annotations

from collections import Counter

from sbt_core.domains.countdown.format import Step, format_backtrack
from sbt_core.domains.countdown.solver import apply_step, legal_steps, reachable

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
