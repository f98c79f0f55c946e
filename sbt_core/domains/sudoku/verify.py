"""Sudoku verifier: replays a response (placements, guesses, reverts) on the puzzle.

- `strict` (default): every line parses; no placement overwrites a given or a filled cell or
  repeats a digit in its row, column or box; a revert names the cell of the last open guess;
  the response ends at `Goal Reached!` with the grid full. (Givens kept and no repeats in a full
  grid: it is the solution, which is unique.)
- `paper`: the second paper's criterion: lines that do not parse are skipped, the last value
  written to a cell counts, and the puzzle is solved when more than 99% of the cells match the
  solution.

`cell_accuracy` is the share of the blanks a response fills with the solution's digit.
"""

from __future__ import annotations

from sbt_core.domains.base import BACKTRACK, GOAL, Verdict, split_response
from sbt_core.domains.sudoku.solver import GUESS_RE, INVALID, NOCAND_RE, PLACE_RE, REVERT_RE, geometry

CATEGORIES = ("correct", "format_error", "rule_violation", "not_reached")


def size_of(puzzle: str) -> int:
    return int(round(len(puzzle) ** 0.5))


def _placement(line: str):
    """(row, column, value, is_guess) of a placement or guess line, else None."""
    if m := PLACE_RE.fullmatch(line):
        return int(m.group(1)), int(m.group(2)), int(m.group(3)), False
    if m := GUESS_RE.fullmatch(line):
        return int(m.group(1)), int(m.group(2)), int(m.group(4)), True
    return None


def replay(puzzle: str, response: str) -> list[int]:
    """The grid a response leaves, read permissively (paper mode): unparsable lines skipped."""
    size = size_of(puzzle)
    grid = [int(ch) for ch in puzzle]
    given = [v > 0 for v in grid]
    saved: list[tuple[int, list[int]]] = []
    for line in split_response(response)[0]:
        if p := _placement(line):
            r, c, v, guess = p
            if 1 <= r <= size and 1 <= c <= size and 1 <= v <= size and not given[(r - 1) * size + c - 1]:
                if guess:
                    saved.append(((r - 1) * size + c - 1, list(grid)))
                grid[(r - 1) * size + c - 1] = v
        elif REVERT_RE.fullmatch(line) and saved:
            grid = saved.pop()[1]
    return grid


def cell_accuracy(puzzle: str, solution: str, response: str) -> float:
    grid = replay(puzzle, response)
    blanks = [i for i, ch in enumerate(puzzle) if ch == "0"]
    return sum(grid[i] == int(solution[i]) for i in blanks) / max(len(blanks), 1)


def verify(puzzle: str, solution: str, response: str, strict: bool = True) -> Verdict:
    if not isinstance(response, str):
        return Verdict(False, "format_error", "response is not a string", mode="strict" if strict else "paper")
    if not strict:
        grid = replay(puzzle, response)
        share = sum(g == int(s) for g, s in zip(grid, solution)) / len(solution)
        ok = share > 0.99
        return Verdict(ok, "correct" if ok else "not_reached", "" if ok else f"{share:.1%} of cells right",
                       mode="paper")
    fail = lambda cat, detail, i=-1: Verdict(False, cat, detail, i, "strict")  # noqa: E731
    size = size_of(puzzle)
    _, peers = geometry(size)
    grid = [int(ch) for ch in puzzle]
    lines, terminator, trailing = split_response(response.rstrip())
    if terminator == BACKTRACK:
        return fail("not_reached", "response ends in <backtrack>")
    if terminator == GOAL and trailing.strip():
        return fail("format_error", "text after 'Goal Reached!'")
    saved: list[tuple[int, list[int]]] = []
    for k, line in enumerate(lines):
        if (p := _placement(line)) is not None:
            r, c, v, guess = p
            if not (1 <= r <= size and 1 <= c <= size and 1 <= v <= size):
                return fail("format_error", f"outside a {size}x{size} grid: {line!r}", k)
            i = (r - 1) * size + c - 1
            if puzzle[i] != "0":
                return fail("rule_violation", f"overwrites the given at ({r},{c})", k)
            if grid[i]:
                return fail("rule_violation", f"({r},{c}) is already filled", k)
            if any(grid[p] == v for p in peers[i]):
                return fail("rule_violation", f"{v} repeats in the row, column or box of ({r},{c})", k)
            if guess:
                saved.append((i, list(grid)))
            grid[i] = v
        elif m := REVERT_RE.fullmatch(line):
            i = (int(m.group(1)) - 1) * size + int(m.group(2)) - 1
            if not saved or saved[-1][0] != i:
                return fail("format_error", f"revert of ({m.group(1)},{m.group(2)}) without an open guess there", k)
            grid = saved.pop()[1]
        elif not (NOCAND_RE.fullmatch(line) or line == INVALID):
            if line == "" and terminator is None and k == len(lines) - 1:
                continue
            return fail("format_error", f"not a step: {line[:40]!r}", k)
    if terminator is None:
        return fail("not_reached", "no 'Goal Reached!' line")
    if not all(grid):
        return fail("not_reached", f"{grid.count(0)} cells left blank")
    return Verdict(True, "correct", "", -1, "strict")
