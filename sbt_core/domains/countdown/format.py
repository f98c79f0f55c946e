"""The paper's Countdown text format: formatting and parsing in one place.

Format (Self-Backtracking, arXiv 2502.04404, `train.py`/`eval_search.py` of the released code):

    ###Question: numbers [90, 11, 37, 95]->target 55
    ###Response:
    90+95=185
    11*185=2035
    2035/37=55
    Goal Reached!

A backtracking example ends with the line `<backtrack>` instead of `Goal Reached!`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sbt_core.domains.base import BACKTRACK, GOAL, RESPONSE_HEADER, split_response
OPS = ("+", "-", "*", "/")

_PROMPT_RE = re.compile(r"###Question: numbers \[([0-9, ]*)\]->target (\d+)\n###Response:\n")
# One step: non-negative integers, one of + - * /, no spaces, e.g. `90+95=185`.
# ASCII digits without leading zeros: `\d` would also take Arabic-Indic or fullwidth digits,
# which int() parses, and `007` is not how any solution is written.
_NUMBER = r"(0|[1-9][0-9]*)"
_STEP_RE = re.compile(rf"{_NUMBER}([+\-*/]){_NUMBER}={_NUMBER}")


@dataclass(frozen=True)
class Step:
    """One line `a op b=c`."""

    a: int
    op: str
    b: int
    result: int

    def __str__(self) -> str:
        return f"{self.a}{self.op}{self.b}={self.result}"


def format_prompt(nums: list[int] | tuple[int, ...], target: int) -> str:
    """Prompt exactly as the paper builds it: `str(list)` gives `[90, 11, 37, 95]`."""
    return f"###Question: numbers {list(int(n) for n in nums)}->target {int(target)}\n{RESPONSE_HEADER}"


def format_solution(steps: list[Step]) -> str:
    """A full solution: one step per line, then `Goal Reached!`."""
    return "".join(f"{s}\n" for s in steps) + GOAL


def format_backtrack(prefix: list[Step], error_step: str) -> str:
    """A backtracking example: kept prefix, one erroneous step line, then `<backtrack>`."""
    return "".join(f"{s}\n" for s in prefix) + f"{error_step}\n{BACKTRACK}"


def parse_prompt(text: str) -> tuple[list[int], int] | None:
    """Numbers and target from a prompt, or None when the text is not a prompt."""
    m = _PROMPT_RE.match(text)
    if not m:
        return None
    nums = [int(x) for x in m.group(1).split(",") if x.strip()]
    return nums, int(m.group(2))


def parse_step(line: str) -> Step | None:
    """A step line, or None when the line is not exactly `a op b=c`."""
    m = _STEP_RE.fullmatch(line)
    if not m:
        return None
    return Step(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))


def solution_steps(solution: str) -> list[str]:
    """The step lines of a well-formed solution or backtracking text."""
    steps, _, _ = split_response(solution)
    return steps
