"""Countdown verifier: rule bookkeeping on parsed steps, never `eval`.

Two modes, and every reported figure names the one that produced it:

- `strict` (default): multiset bookkeeping (one copy removed per use), exact division,
  non-negative results, every number used exactly once, the last value equal to the
  target, and the response must end at the `Goal Reached!` line (only whitespace after it).
  Numbers are ASCII digits without leading zeros.
- `paper`: the acceptance rules of the paper's `eval_search.py validate_steps`: steps are
  the text before the first `<backtrack>` or `Goal Reached!`, stripped, then split on
  newlines with empty steps kept (so whitespace before the first step is accepted and a
  blank line between steps is not); a step need only *start* with `a op b=c` (any length,
  any Unicode digits, as Python's `\d` and `int` take them); `/` is floor division;
  operands must be present in the pool, after which *all* copies of both are removed; the
  last result must equal the target; not all numbers need be used.
"""

from __future__ import annotations

import re
from collections import Counter
from sbt_core.domains.base import Verdict
from sbt_core.domains.countdown.format import BACKTRACK, GOAL, parse_step, split_response

CATEGORIES = ("correct", "format_error", "rule_violation", "computation_error", "not_reached")
MODES = ("strict", "paper")
# Numbers longer than this are refused before int() in both modes: Python refuses to parse
# more than 4,300 digits (the released checker crashes there). It is far above any Countdown
# value, large `number_max` included, and far above the 12 characters a padded `000...37` needs.
_MAX_DIGITS = 1000
_PAPER_STEP_RE = re.compile(r"(\d+)\s*([+\-*/])\s*(\d+)\s*=\s*(\d+)")


def verify(nums, target: int, response: str, strict: bool = True) -> Verdict:
    """Check a response (the text after `###Response:\\n`) against a problem.

    Never raises on any string; returns a Verdict whose `category` is one of CATEGORIES.
    """
    if not isinstance(response, str):
        return Verdict(False, "format_error", "response is not a string", mode=_mode(strict))
    nums = [int(n) for n in nums]
    return _verify_strict(nums, int(target), response) if strict else _verify_paper(nums, int(target), response)


def _mode(strict: bool) -> str:
    return "strict" if strict else "paper"


def _apply(a: int, op: str, b: int, floor_division: bool) -> tuple[int | None, str]:
    """Result of `a op b`, or (None, reason) when the operation is not allowed."""
    if op == "+":
        return a + b, ""
    if op == "*":
        return a * b, ""
    if op == "-":
        if a - b < 0 and not floor_division:
            return None, f"negative result {a}-{b}"
        return a - b, ""
    if b == 0:
        return None, "division by zero"
    if a % b and not floor_division:
        return None, f"inexact division {a}/{b}"
    return a // b, ""


def _verify_strict(nums: list[int], target: int, response: str) -> Verdict:
    fail = lambda cat, detail, i=-1: Verdict(False, cat, detail, i, "strict")  # noqa: E731
    lines, terminator, trailing = split_response(response.rstrip())
    if terminator is None:
        if lines == [""]:
            return fail("format_error", "empty response")
        # No claim of success: judge the steps, then report not_reached.
    elif terminator == BACKTRACK:
        return fail("not_reached", "response ends in <backtrack>")
    elif trailing.strip():
        return fail("format_error", "text after 'Goal Reached!'")
    pool = Counter(nums)
    value = None
    for i, line in enumerate(lines):
        if any(len(tok) > _MAX_DIGITS for tok in re.findall(r"\d+", line)):
            return fail("format_error", "number too long", i)
        step = parse_step(line)
        if step is None:
            return fail("format_error", f"not a step: {line[:40]!r}", i)
        need = Counter([step.a, step.b])
        if any(pool[n] < k for n, k in need.items()):
            return fail("rule_violation", f"number not available in {step}", i)
        result, reason = _apply(step.a, step.op, step.b, floor_division=False)
        if result is None:
            return fail("computation_error", reason, i)
        if result != step.result:
            return fail("computation_error", f"{step.a}{step.op}{step.b} is {result}, not {step.result}", i)
        pool -= need
        pool[result] += 1
        value = result
    if terminator is None:
        return fail("not_reached", "no 'Goal Reached!' line")
    if value != target:
        return fail("not_reached", f"final value {value} is not the target {target}")
    if sum(pool.values()) != 1:
        # The target is reached but some numbers were never used.
        return fail("rule_violation", "not every number was used")
    return Verdict(True, "correct", "", -1, "strict")


def _verify_paper(nums: list[int], target: int, response: str) -> Verdict:
    fail = lambda cat, detail, i=-1: Verdict(False, cat, detail, i, "paper")  # noqa: E731
    # As in the paper's eval: the steps end at the first `<backtrack>` or `Goal Reached!`.
    cut = [p for p in (response.find(BACKTRACK), response.find(GOAL)) if p >= 0]
    if not cut:
        return fail("format_error", "Invalid output format")
    pool = list(nums)
    value = None
    lines = response[: min(cut)].strip().split("\n")  # as released: strip the block, keep empty steps
    for i, line in enumerate(lines):
        m = _PAPER_STEP_RE.match(line)  # a prefix match, as in the paper's code
        if m is None:
            return fail("format_error", "Invalid step format", i)
        if any(len(g) > _MAX_DIGITS for g in (m.group(1), m.group(3), m.group(4))):
            return fail("format_error", "number too long", i)
        a, op, b, stated = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if a not in pool or b not in pool:
            return fail("rule_violation", "Unknown number in step", i)
        result, reason = _apply(a, op, b, floor_division=True)
        if result is None:
            return fail("computation_error", reason, i)
        if result != stated:
            return fail("computation_error", "Incorrect result in step", i)
        pool = [n for n in pool if n not in (a, b)] + [result]  # removes *all* copies
        value = result
    if value != target:
        return fail("not_reached", f"Not reached target: {value} not equal to {target}")
    return Verdict(True, "correct", "", -1, "paper")
