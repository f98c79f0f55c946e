"""Countdown search traces in the Stream-of-Search vocabulary that arXiv 2504.07052 trains on.

A trace is the search written out, one event per line (the released generator's text, `released`):

    Current State: 24:[4, 8, 2], Operations: []
    Exploring Operation: 8*2=16, Resulting Numbers: [4, 16]
    Generated Node #0,0: 24:[4, 16] Operation: 8*2=16
    Moving to Node #0,0
    Current State: 24:[4, 16], Operations: ['8*2=16']
    Exploring Operation: 4+16=20, Resulting Numbers: [20]
    20,24 unequal: No Solution
    Moving to Node #0,0
    Current State: 24:[4, 16], Operations: ['8*2=16']
    ...
    Moving to Node #0
    Current State: 24:[4, 8, 2], Operations: []
    ...
    Exploring Operation: 2*12=24, Resulting Numbers: [24]
    24,24 equal: Goal Reached

Node ids are paths (`#0,2,1`: the second child of the third child of the root, counting every child
written at a node). Styles:

- `dfs`: depth first; children sorted (stably) by a heuristic of their numbers, `sum` (mean
  |n - target|) or `mult` (distance to the nearest factor of the target); a child whose heuristic
  exceeds the target is pruned, so DFS can fail.
- `bfs`: level by level; children shuffled, then the `beam` best (by the heuristic) kept.
- `mix`: per problem DFS or BFS at random, heuristic at random, BFS beam width drawn from 1-5.
- `think`: DFS with the mult heuristic that, at a pair of numbers that cannot make the target,
  writes `[a, b] No Solution` instead of exploring it.
- `direct`: one solution path alone, in the same vocabulary.

Two formats (`FORMATS`, `BuildDataConfig.trace_format`):

- `released` (the default): the text of the authors' generator (KempnerInstitute/Backtrack,
  `countdown_dfs.py`, `countdown_dfs_hint.py`, `countdown.py`, `countdown_utils.py`; re-implemented
  from its behaviour). Children per pair in list order, `a+b, a*b`, then `larger-smaller` and the
  exact `larger/smaller`; `mult` is the **sum** over the numbers of the distance to the nearest
  factor of the target, factors from 2; after every child but a node's last, `Moving to Node #parent`
  and the parent's `Current State` are restated (a failed leaf included); a failed search ends with
  no closing line. `direct` is the first solution of an exhaustive DFS in that child order, written
  as the released `optimal_path`: flat node ids from `#2`, `Generated Node #k: [..] from Operation:`,
  no `Moving to Node` lines.
- `sbt` (ours, before the released text was compared): children `+, -, *, /` per pair with the
  larger operand first; `mult` the **mean** distance, factors from 1 (prunes less: 84% of 4-number
  problems solved against 63%); the parent restated after a failed subtree (never after a leaf);
  `No solution found.` closes a failed search; `direct` is the problem's own (random) solution with
  `Moving to Node` lines and the target in every node line. BFS (`bfs`, `mix`) is ours in both
  formats (the released BFS is not in the authors' snapshot); it takes the format's heuristic and
  child order.

`final_steps` reads back the path a trace claims the way the released checker does (the operations of
the last `Current State` before the goal line, then the last explored operation), for the verifier.
"""

from __future__ import annotations

import re
from itertools import combinations

from sbt_core.domains.countdown.format import GOAL, Step

REACHED = "Goal Reached"  # the trace's own goal line ends `equal: Goal Reached`
FAILED = "No solution found."  # the `sbt` format's last line of a failed search (and a failed BFS's)
STYLES = ("dfs", "bfs", "mix", "think", "direct")
HEURISTICS = ("sum", "mult")
FORMATS = ("released", "sbt")
# The trace vocabulary's fixed phrases (one token each); longer before shorter where one starts the other.
PHRASES = ("Current State:", "Operations:", "Exploring Operation:", "Resulting Numbers:", "Generated Node",
           "Operation:", "Moving to Node", "unequal: No Solution", "equal: Goal Reached", "No Solution", FAILED)
# Its characters, then the released direct path's `from` (a word, last: the ids before it stay as they were).
CHARS = ("#", "'", ":", "from")

_STATE_RE = re.compile(r"Current State: \d+:\[[0-9, ]*\], Operations: \[(.*)\]")
_EXPLORING_RE = re.compile(r"Exploring Operation: (\S+), Resulting Numbers: \[[0-9, ]*\]")


def _factors(target: int, fmt: str) -> list[int]:
    first = 2 if fmt == "released" else 1
    return [f for f in range(first, target + 1) if target % f == 0] or [target]  # (target 1 has none from 2)


def heuristic(nums: list[int], target: int, kind: str, fmt: str = "released") -> float:
    """`sum`: mean |n - target|. `mult`: distance of each number to the nearest factor of the target, summed
    (`released`) or averaged (`sbt`)."""
    if kind == "sum":
        return sum(abs(n - target) for n in nums) / len(nums)
    factors = _factors(target, fmt)
    total = sum(min(abs(n - f) for f in factors) for n in nums)
    return total if fmt == "released" else total / len(nums)


def _combine(x: int, y: int, fmt: str) -> list[tuple[str, int]]:
    """(operation, result) for one pair: `released` writes `x+y, x*y` in list order, then larger-smaller and the
    exact larger/smaller; `sbt` writes `+, -, *, /` all larger first."""
    a, b = max(x, y), min(x, y)
    div = [(f"{a}/{b}={a // b}", a // b)] if b and a % b == 0 else []
    if fmt == "released":
        return [(f"{x}+{y}={x + y}", x + y), (f"{x}*{y}={x * y}", x * y), (f"{a}-{b}={a - b}", a - b), *div]
    return [(f"{a}+{b}={a + b}", a + b), (f"{a}-{b}={a - b}", a - b), (f"{a}*{b}={a * b}", a * b), *div]


def children(nums: list[int], target: int, fmt: str = "released") -> list[tuple[str, list[int]]]:
    """(operation, resulting numbers) for every pair (in list order) and operation, in the format's order."""
    out = []
    for i, j in combinations(range(len(nums)), 2):
        rest = [nums[k] for k in range(len(nums)) if k not in (i, j)]
        out += [(op, rest + [r]) for op, r in _combine(nums[i], nums[j], fmt)]
    return out


def _ordered(nums, target, kind, fmt, prune=True, rng=None):
    """Children sorted by heuristic, ties in generation order (the released code's stable sort); pruned where the
    heuristic exceeds the target."""
    kids = children(nums, target, fmt)
    if rng is not None:
        kids = [kids[i] for i in rng.permutation(len(kids))]
    scored = sorted(((heuristic(new, target, kind, fmt), k, op, new) for k, (op, new) in enumerate(kids)),
                    key=lambda x: (x[0], x[1]))
    return [(op, new) for h, _, op, new in scored if not prune or h <= target]


def _state(target, nums, ops) -> str:
    return f"Current State: {target}:{list(nums)}, Operations: {list(ops)}"


def _leaf(r: int, target: int) -> str:
    return f"{r},{target} equal: {REACHED}" if r == target else f"{r},{target} unequal: No Solution"


def _pair_reaches(nums: list[int], target: int) -> bool:
    """Whether a pair makes the target in one operation: the released `think` asks whether the pair is the last
    node of any solution of the problem, which is the same set of pairs."""
    return any(new[0] == target for _, new in children(nums, target))


def dfs(nums, target, kind="sum", think=False, fmt: str = "released") -> str:
    """A depth-first search trace (`think`: hopeless pairs named, not explored); see the module docstring."""
    lines = []

    def visit(node, state, ops) -> bool:
        lines.append(_state(target, state, ops))
        kids = _ordered(state, target, kind, fmt)
        generated = 0  # `sbt` numbers only the children it moves to
        for k, (op, new) in enumerate(kids):
            lines.append(f"Exploring Operation: {op}, Resulting Numbers: {new}")
            explored = False
            if len(new) == 1:
                lines.append(_leaf(new[0], target))
                if new[0] == target:
                    return True
            elif think and len(new) == 2 and not _pair_reaches(new, target):
                lines.append(f"{new} No Solution")
            else:
                child = f"{node},{k if fmt == 'released' else generated}"
                generated += 1
                lines.extend([f"Generated Node #{child}: {target}:{new} Operation: {op}", f"Moving to Node #{child}"])
                if visit(child, new, ops + [op]):
                    return True
                explored = True
            if explored and fmt == "sbt" or fmt == "released" and k < len(kids) - 1:
                lines.extend([f"Moving to Node #{node}", _state(target, state, ops)])
        return False

    if not visit("0", list(nums), []) and fmt == "sbt":
        lines.append(FAILED)
    return "\n".join(lines)


def bfs(nums, target, kind="sum", beam=3, rng=None, fmt: str = "released") -> str:
    lines = [_state(target, nums, [])]
    frontier = [("0", list(nums), [])]
    first = True
    while frontier:
        level = []
        for node, state, ops in frontier:
            if not first:
                lines += [f"Moving to Node #{node}", _state(target, state, ops)]
            k = 0
            for op, new in _ordered(state, target, kind, fmt, prune=False, rng=rng):
                lines.append(f"Exploring Operation: {op}, Resulting Numbers: {new}")
                if len(new) == 1:
                    lines.append(_leaf(new[0], target))
                    if new[0] == target:
                        return "\n".join(lines)
                    continue
                child = f"{node},{k}"
                k += 1
                lines.append(f"Generated Node #{child}: {target}:{new} Operation: {op}")
                level.append((heuristic(new, target, kind, fmt), len(level), child, new, ops + [op]))
        first = False
        frontier = [(c, n, o) for _, _, c, n, o in sorted(level)[:beam]]
    lines.append(FAILED)
    return "\n".join(lines)


def first_solution(nums: list[int], target: int) -> list[str] | None:
    """The first solution of an exhaustive DFS over pairs in list order and the released child order (what the
    released generator keeps as a problem's solution), as operation strings; None when there is none."""
    if len(nums) == 1:
        return [] if nums[0] == target else None
    for op, new in children(nums, target, "released"):
        rest = first_solution(new, target)
        if rest is not None:
            return [op, *rest]
    return None


def _apply(nums: list[int], op: str) -> list[int]:
    """The numbers after `op` (`a?b=c`), its operands removed by value, as the released `convert_to_path` does."""
    left, result = op.split("=")
    a, b = re.split(r"[+\-*/]", left)
    out = list(nums)
    out.remove(int(a))
    out.remove(int(b))
    return out + [int(result)]


def direct_released(nums, target) -> str:
    """The released `optimal_path` of the first DFS solution (flat ids from 2, no `Moving to Node` lines)."""
    ops = first_solution(list(nums), target)
    if ops is None:
        raise ValueError(f"{list(nums)} cannot make {target}: no direct solution to write")
    state, done = list(nums), []
    lines = [_state(target, state, done)]
    for i, op in enumerate(ops):
        state = _apply(state, op)
        lines.append(f"Exploring Operation: {op}, Resulting Numbers: {state}")
        if len(state) == 1:
            lines.append(_leaf(state[0], target))
        else:
            done = done + [op]
            lines += [f"Generated Node #{i + 2}: {state} from Operation: {op}", _state(target, state, done)]
    return "\n".join(lines)


def direct(nums, target, steps: list[Step]) -> str:
    """The `sbt` direct path: the given solution written as a search that never turns back."""
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


def write(nums, target, style: str, rng, steps: list[Step] | None = None, fmt: str = "released") -> str:
    """A trace of `style` in format `fmt` for one problem (`steps`: its solution, for the `sbt` direct path)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown Countdown trace format {fmt!r}; choose one of {FORMATS}")
    if style == "dfs":
        return dfs(nums, target, HEURISTICS[rng.integers(2)], fmt=fmt)
    if style == "bfs":
        return bfs(nums, target, HEURISTICS[rng.integers(2)], beam=int(rng.integers(1, 6)), rng=rng, fmt=fmt)
    if style == "mix":
        use_bfs, kind = bool(rng.integers(2)), HEURISTICS[rng.integers(2)]
        if use_bfs:
            return bfs(nums, target, kind, beam=int(rng.integers(1, 6)), rng=rng, fmt=fmt)
        return dfs(nums, target, kind, fmt=fmt)
    if style == "think":
        return dfs(nums, target, "mult", think=True, fmt=fmt)
    if style == "direct":
        return direct_released(nums, target) if fmt == "released" else direct(nums, target, steps or [])
    raise ValueError(f"unknown Countdown trace style {style!r}; choose one of {STYLES}")


def first_line(problem_nums, target) -> str:
    """Every trace's first line: the root state (the released evaluation's prompt)."""
    return _state(target, list(problem_nums), [])


def is_trace(response: str) -> bool:
    """A trace, or the rest of one whose first line was the prompt (the released evaluation gives the root state)."""
    return response.lstrip().startswith(("Current State:", "Exploring Operation:"))


def final_steps(response: str) -> list[str] | None:
    """The path a trace claims: the operations from the root to its first `equal: Goal Reached` line.

    None when the trace claims no goal. As the released checker reads it: the `Operations` of the last
    `Current State` line before the goal line (none: the root), then the last operation explored; [] when no
    operation was explored. So every format reads back, the direct one with no `Moving to Node` lines too.
    """
    ops: list[str] = []
    last_op = None
    for line in response.split("\n"):
        if m := _STATE_RE.fullmatch(line):
            ops = [x.strip().strip("'") for x in m.group(1).split(",") if x.strip()]
        elif m := _EXPLORING_RE.fullmatch(line):
            last_op = m.group(1)
        elif line.endswith(f"equal: {REACHED}") and not line.endswith(f"unequal: {REACHED}"):
            return [] if last_op is None else [*ops, last_op]
    return None


def as_solution(response: str) -> str | None:
    """The claimed path in the step format (`a op b=c` lines, `Goal Reached!`), for the step verifier."""
    steps = final_steps(response)
    if steps is None:
        return None
    return "".join(f"{s}\n" for s in steps) + GOAL

