"""Countdown search traces in the Stream-of-Search vocabulary that arXiv 2504.07052 trains on.

A trace is the search written out, one event per line:

    Current State: 24:[3, 8, 2], Operations: []
    Exploring Operation: 8-2=6, Resulting Numbers: [3, 6]
    Generated Node #0,0: 24:[3, 6] Operation: 8-2=6
    Moving to Node #0,0
    Current State: 24:[3, 6], Operations: ['8-2=6']
    Exploring Operation: 6-3=3, Resulting Numbers: [3]
    3,24 unequal: No Solution
    Exploring Operation: 6*3=18, Resulting Numbers: [18]
    ...
    Moving to Node #0
    Current State: 24:[3, 8, 2], Operations: []
    ...
    Exploring Operation: 8*3=24, Resulting Numbers: [24]
    24,24 equal: Goal Reached

Node ids are paths (`#0,2,1`: the second child of the third child of the root). A search that
fails ends with `No solution found.`. Styles (our reading of the paper's code, paraphrased):

- `dfs`: depth first; children sorted by a heuristic of their numbers, `sum` (mean |n - target|)
  or `mult` (mean distance to the nearest factor of the target); a child whose heuristic exceeds
  the target is pruned, so DFS can fail.
- `bfs`: level by level; children shuffled, then the `beam` best (by the heuristic) kept.
- `mix`: per problem DFS or BFS at random, heuristic at random, BFS beam width drawn from 1-5.
- `think`: DFS with the mult heuristic that, at a pair of numbers that cannot make the target,
  writes `[a, b] No Solution` instead of exploring it.
- `direct`: the optimal path alone, in the same vocabulary.

Operations are written larger operand first (`84-14=70`, `8/2=4`), division only when exact.
`final_steps` reads back the path a trace claims, for the verifier.
"""

from __future__ import annotations

import re
from itertools import combinations

from sbt_core.domains.countdown.format import GOAL, Step

REACHED = "Goal Reached"  # the trace's own goal line ends `equal: Goal Reached`
FAILED = "No solution found."
STYLES = ("dfs", "bfs", "mix", "think", "direct")
HEURISTICS = ("sum", "mult")
# The trace vocabulary's fixed phrases (one token each); longer before shorter where one starts the other.
PHRASES = ("Current State:", "Operations:", "Exploring Operation:", "Resulting Numbers:", "Generated Node",
           "Operation:", "Moving to Node", "unequal: No Solution", "equal: Goal Reached", "No Solution", FAILED)
CHARS = ("#", "'", ":")

_GENERATED_RE = re.compile(r"Generated Node #([0-9,]+): \d+:\[[0-9, ]*\] Operation: (\S+)")
_MOVING_RE = re.compile(r"Moving to Node #([0-9,]+)")
_EXPLORING_RE = re.compile(r"Exploring Operation: (\S+), Resulting Numbers: \[[0-9, ]*\]")


def _factors(target: int) -> list[int]:
    return [f for f in range(1, target + 1) if target % f == 0] if target > 0 else [0]


def heuristic(nums: list[int], target: int, kind: str) -> float:
    if kind == "sum":
        return sum(abs(n - target) for n in nums) / len(nums)
    factors = _factors(target)
    return sum(min(abs(n - f) for f in factors) for n in nums) / len(nums)


def children(nums: list[int], target: int) -> list[tuple[str, list[int]]]:
    """(operation, resulting numbers) for every pair and operation, in a fixed order."""
    out = []
    for i, j in combinations(range(len(nums)), 2):
        a, b = max(nums[i], nums[j]), min(nums[i], nums[j])
        rest = [nums[k] for k in range(len(nums)) if k not in (i, j)]
        for op, r in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a // b if b and a % b == 0 else None)):
            if r is not None:
                out.append((f"{a}{op}{b}={r}", rest + [r]))
    return out


def _ordered(nums, target, kind, prune=True, rng=None):
    kids = children(nums, target)
    if rng is not None:
        kids = [kids[i] for i in rng.permutation(len(kids))]
    scored = sorted(((heuristic(new, target, kind), k, op, new) for k, (op, new) in enumerate(kids)),
                    key=lambda x: (x[0], x[1]))
    return [(op, new) for h, _, op, new in scored if not prune or h <= target]


def _state(target, nums, ops) -> str:
    return f"Current State: {target}:{list(nums)}, Operations: {list(ops)}"


def _leaf(r: int, target: int) -> str:
    return f"{r},{target} equal: {REACHED}" if r == target else f"{r},{target} unequal: No Solution"


def _pair_reaches(nums: list[int], target: int) -> bool:
    return any(new[0] == target for _, new in children(nums, target))


def dfs(nums, target, kind="sum", think=False) -> str:
    lines = [_state(target, nums, [])]

    def visit(node, state, ops) -> bool:
        k = 0
        for op, new in _ordered(state, target, kind):
            lines.append(f"Exploring Operation: {op}, Resulting Numbers: {new}")
            if len(new) == 1:
                lines.append(_leaf(new[0], target))
                if new[0] == target:
                    return True
                continue
            if think and len(new) == 2 and not _pair_reaches(new, target):
                lines.append(f"{new} No Solution")
                continue
            child = f"{node},{k}"
            k += 1
            lines.extend([f"Generated Node #{child}: {target}:{new} Operation: {op}", f"Moving to Node #{child}",
                          _state(target, new, ops + [op])])
            if visit(child, new, ops + [op]):
                return True
            lines.extend([f"Moving to Node #{node}", _state(target, state, ops)])
        return False

    if not visit("0", list(nums), []):
        lines.append(FAILED)
    return "\n".join(lines)


def bfs(nums, target, kind="sum", beam=3, rng=None) -> str:
    lines = [_state(target, nums, [])]
    frontier = [("0", list(nums), [])]
    first = True
    while frontier:
        level = []
        for node, state, ops in frontier:
            if not first:
                lines += [f"Moving to Node #{node}", _state(target, state, ops)]
            k = 0
            for op, new in _ordered(state, target, kind, prune=False, rng=rng):
                lines.append(f"Exploring Operation: {op}, Resulting Numbers: {new}")
                if len(new) == 1:
                    lines.append(_leaf(new[0], target))
                    if new[0] == target:
                        return "\n".join(lines)
                    continue
                child = f"{node},{k}"
                k += 1
                lines.append(f"Generated Node #{child}: {target}:{new} Operation: {op}")
                level.append((heuristic(new, target, kind), len(level), child, new, ops + [op]))
        first = False
        frontier = [(c, n, o) for _, _, c, n, o in sorted(level)[:beam]]
    lines.append(FAILED)
    return "\n".join(lines)


def direct(nums, target, steps: list[Step]) -> str:
    """The optimal path alone, written as a search that never turns back."""
    state, ops, node = list(nums), [], "0"
    lines = [_state(target, state, ops)]
    for i, s in enumerate(steps):
        a, b = max(s.a, s.b), min(s.a, s.b)
        op = f"{a}{s.op}{b}={s.result}"
        rest = list(state)
        rest.remove(s.a)
        rest.remove(s.b)
        state = rest + [s.result]
        lines.append(f"Exploring Operation: {op}, Resulting Numbers: {state}")
        if i == len(steps) - 1:
            lines.append(_leaf(s.result, target))
        else:
            node = f"{node},0"
            ops = ops + [op]
            lines += [f"Generated Node #{node}: {target}:{state} Operation: {op}", f"Moving to Node #{node}",
                      _state(target, state, ops)]
    return "\n".join(lines)


def write(nums, target, style: str, rng, steps: list[Step] | None = None) -> str:
    """A trace of `style` for one problem (`steps`: the optimal path, for `direct`)."""
    if style == "dfs":
        return dfs(nums, target, HEURISTICS[rng.integers(2)])
    if style == "bfs":
        return bfs(nums, target, HEURISTICS[rng.integers(2)], beam=int(rng.integers(1, 6)), rng=rng)
    if style == "mix":
        use_bfs, kind = bool(rng.integers(2)), HEURISTICS[rng.integers(2)]
        return bfs(nums, target, kind, beam=int(rng.integers(1, 6)), rng=rng) if use_bfs else dfs(nums, target, kind)
    if style == "think":
        return dfs(nums, target, "mult", think=True)
    if style == "direct":
        return direct(nums, target, steps or [])
    raise ValueError(f"unknown Countdown trace style {style!r}; choose one of {STYLES}")


def is_trace(response: str) -> bool:
    return response.lstrip().startswith("Current State:")


def final_steps(response: str) -> list[str] | None:
    """The path a trace claims: the operations from the root to its `equal: Goal Reached` line.

    None when the trace claims no goal. The node the goal is found at is the last one moved to
    (the root before any move); its path is its own operation and its ancestors'.
    """
    ops_of: dict[str, str] = {}
    node = "0"
    last_op = None
    for line in response.split("\n"):
        if m := _GENERATED_RE.fullmatch(line):
            ops_of[m.group(1)] = m.group(2)
        elif m := _MOVING_RE.fullmatch(line):
            node = m.group(1)
        elif m := _EXPLORING_RE.fullmatch(line):
            last_op = m.group(1)
        elif line.endswith(f"equal: {REACHED}") and not line.endswith(f"unequal: {REACHED}"):
            parts = node.split(",")
            path = [ops_of.get(",".join(parts[: i + 1])) for i in range(1, len(parts))]
            if last_op is None or any(p is None for p in path):
                return []
            return [*path, last_op]
    return None


def as_solution(response: str) -> str | None:
    """The claimed path in the step format (`a op b=c` lines, `Goal Reached!`), for the step verifier."""
    steps = final_steps(response)
    if steps is None:
        return None
    return "".join(f"{s}\n" for s in steps) + GOAL

