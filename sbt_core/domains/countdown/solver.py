"""Exhaustive Countdown solver, vectorised over a batch of problems with numpy.

A solution uses every number exactly once, so with n numbers it has n-1 steps: that is
the shortest (optimal) path in the strict rules. Rather than a per-problem DFS, we expand
all programs level by level for a whole batch: with m numbers left there are
C(m, 2) pairs x 5 outcomes (a+b, a*b, |a-b|, a/b, b/a; division only when exact), giving
30 * 15 * 5 = 2,250 programs for 4 numbers. Invalid branches carry the value -1.
The last level compares with the target without dividing (x/y == t  <=>  x == t*y).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from sbt_core.domains.countdown.format import Step

N_OUTCOMES = 5  # +, *, |a-b|, a/b, b/a


@lru_cache(maxsize=None)
def _pairs(m: int) -> tuple[list[tuple[int, int]], list[list[int]]]:
    pairs = list(combinations(range(m), 2))
    rests = [[k for k in range(m) if k not in p] for p in pairs]
    return pairs, rests


def _outcomes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """All five results of combining x and y, shape x.shape + (5,), -1 where invalid."""
    valid = (x >= 0) & (y >= 0)
    safe_y = np.where(y > 0, y, 1)
    safe_x = np.where(x > 0, x, 1)
    out = np.stack(
        [
            x + y,
            x * y,
            np.abs(x - y),
            np.where((y > 0) & (x % safe_y == 0), x // safe_y, -1),
            np.where((x > 0) & (y % safe_x == 0), y // safe_x, -1),
        ],
        axis=-1,
    )
    return np.where(valid[..., None], out, -1)


def _expand(state: np.ndarray) -> np.ndarray:
    """(B, K, m) -> (B, K * C(m,2) * 5, m-1): every pair, every outcome, result first."""
    b, k, m = state.shape
    pairs, rests = _pairs(m)
    children = []
    for (i, j), rest in zip(pairs, rests):
        res = _outcomes(state[:, :, i], state[:, :, j])  # (B, K, 5)
        others = np.broadcast_to(state[:, :, rest][:, :, None, :], (b, k, N_OUTCOMES, m - 2))
        children.append(np.concatenate([res[..., None], others], axis=-1))  # (B, K, 5, m-1)
    return np.stack(children, axis=2).reshape(b, -1, m - 1)


def _final_hits(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., 5) booleans: which outcome of combining x and y equals t (no division)."""
    hits = np.stack(
        [x + y == t, x * y == t, np.abs(x - y) == t, (x == t * y) & (y > 0), (y == t * x) & (x > 0)],
        axis=-1,
    )
    return hits & ((x >= 0) & (y >= 0))[..., None]


def solve_batch(nums: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Boolean hits (B, P): program p of problem b reaches its target using every number.

    int32 is enough for the default ranges (99**4 < 2**31); wider pools should pass int64.
    """
    state = nums[:, None, :]
    t = targets.astype(nums.dtype)[:, None]
    if state.shape[2] == 2:
        return _final_hits(state[:, :, 0], state[:, :, 1], t).reshape(len(nums), -1)
    while state.shape[2] > 3:
        state = _expand(state)
    # Fuse the last two levels: never materialise the (B, K*15, 2) state.
    pairs, rests = _pairs(3)
    per_pair = []
    for (i, j), (k,) in zip(pairs, rests):
        res = _outcomes(state[:, :, i], state[:, :, j])  # (B, K, 5)
        per_pair.append(_final_hits(res, state[:, :, k][:, :, None], t[:, :, None]))  # (B, K, 5, 5)
    return np.stack(per_pair, axis=2).reshape(len(nums), -1)


def pick_programs(hits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row with a hit, a uniformly placed start and the first hit from there on.

    Returns the program index per row (-1 where the row has no hit).
    """
    b, p = hits.shape
    start = rng.integers(0, p, size=b)
    key = (np.arange(p)[None, :] - start[:, None]) % p
    key = np.where(hits, key, p)
    choice = key.argmin(axis=1)
    return np.where(hits.any(axis=1), choice, -1)


def _combine(x: int, y: int, outcome: int) -> Step:
    if outcome == 0:
        return Step(x, "+", y, x + y)
    if outcome == 1:
        return Step(x, "*", y, x * y)
    if outcome == 2:
        hi, lo = max(x, y), min(x, y)
        return Step(hi, "-", lo, hi - lo)
    if outcome == 3:
        return Step(x, "/", y, x // y)
    return Step(y, "/", x, y // x)


def decode_program(nums: list[int], program: int) -> list[Step]:
    """The steps of program `program` (an index from solve_batch) on `nums`."""
    n = len(nums)
    radices = [len(_pairs(m)[0]) * N_OUTCOMES for m in range(n, 1, -1)]
    digits = []
    for r in reversed(radices):
        program, d = divmod(program, r)
        digits.append(d)
    digits.reverse()
    state = list(nums)
    steps = []
    for d in digits:
        pairs, rests = _pairs(len(state))
        pair, outcome = divmod(d, N_OUTCOMES)
        i, j = pairs[pair]
        step = _combine(state[i], state[j], outcome)
        steps.append(step)
        state = [step.result] + [state[k] for k in rests[pair]]
    return steps


def legal_steps(pool: list[int]) -> list[Step]:
    """Every legal step from a multiset of numbers (non-negative, exact division)."""
    out = []
    for i, j in combinations(range(len(pool)), 2):
        x, y = pool[i], pool[j]
        for outcome in range(N_OUTCOMES):
            if outcome == 3 and not (y > 0 and x % y == 0):
                continue
            if outcome == 4 and not (x > 0 and y % x == 0):
                continue
            out.append(_combine(x, y, outcome))
    return out


def apply_step(pool: list[int], step: Step) -> list[int]:
    """The pool after a legal step: one copy of each operand removed, the result added."""
    rest = list(pool)
    rest.remove(step.a)
    rest.remove(step.b)
    return sorted(rest + [step.result])


@lru_cache(maxsize=1 << 18)
def _reachable(pool: tuple[int, ...], target: int) -> bool:
    if len(pool) == 1:
        return pool[0] == target
    return any(_reachable(tuple(apply_step(list(pool), s)), target) for s in legal_steps(list(pool)))


def reachable(pool: list[int], target: int) -> bool:
    """Whether `target` can be reached using every number of `pool` exactly once."""
    return _reachable(tuple(sorted(int(n) for n in pool)), int(target))
