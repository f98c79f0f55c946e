"""A human-style Sudoku solver that writes its search as a trace, and the trace's line format.

The solver keeps pencil marks (candidate sets, as bitmasks) and applies, until none applies:
naked singles, hidden singles, naked pairs and locked candidates (pointing and claiming).
When stuck it guesses on the blank with the fewest candidates (smallest value first); a blank
left with no candidate, or a digit with no place in a unit, is a contradiction, which reverts
the grid to before the last guess and tries its next candidate.

Trace lines (cells 1-based, `(r,c)` one token):

    (r,c)=v                 a placement (a single of either kind)
    guess (r,c) [2 5 7]=2   a guess: the cell's candidates, then the value tried
    nocand (r,c)            contradiction: this blank has no candidate left
    invalid                 contradiction: some digit has no place left in a unit
    revert (r,c)            undo everything since the guess on (r,c)
    Goal Reached!           the grid is full

Eliminations (naked pairs, locked candidates) change only pencil marks and are not written.
The direct solution is the trace with guesses turned into placements and abandoned branches
(and their reverts) removed: one placement per blank.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import combinations

from sbt_core.domains.base import GOAL
from sbt_core.domains.sudoku.config import BOXES

PLACE_RE = re.compile(r"\((\d),(\d)\)=(\d)")
GUESS_RE = re.compile(r"guess \((\d),(\d)\) \[([\d ]+)\]=(\d)")
NOCAND_RE = re.compile(r"nocand \((\d),(\d)\)")
REVERT_RE = re.compile(r"revert \((\d),(\d)\)")
INVALID = "invalid"


@lru_cache(maxsize=None)
def geometry(size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(units: rows, columns, boxes as cell lists; peers of every cell)."""
    br, bc = BOXES[size]
    rows = [[r * size + c for c in range(size)] for r in range(size)]
    cols = [[r * size + c for r in range(size)] for c in range(size)]
    boxes = [[(r0 + r) * size + c0 + c for r in range(br) for c in range(bc)]
             for r0 in range(0, size, br) for c0 in range(0, size, bc)]
    units = rows + cols + boxes
    peers = [sorted({p for u in units if i in u for p in u} - {i}) for i in range(size * size)]
    return units, peers


def cell(i: int, size: int) -> str:
    return f"({i // size + 1},{i % size + 1})"


def _values(mask: int) -> list[int]:
    return [v for v in range(1, 10) if mask >> v & 1]


class _Board:
    def __init__(self, grid: list[int], size: int):
        self.size = size
        self.units, self.peers = geometry(size)
        self.grid = grid = [int(v) for v in grid]
        full = sum(1 << v for v in range(1, size + 1))
        self.cand = [0 if v else full for v in grid]
        for i, v in enumerate(grid):
            if v:
                for p in self.peers[i]:
                    self.cand[p] &= ~(1 << v)

    def copy(self):
        b = object.__new__(_Board)
        b.size, b.units, b.peers, b.grid, b.cand = self.size, self.units, self.peers, list(self.grid), list(self.cand)
        return b

    def place(self, i: int, v: int) -> None:
        self.grid[i], self.cand[i] = v, 0
        bit = ~(1 << v)
        for p in self.peers[i]:
            self.cand[p] &= bit

    def contradiction(self) -> str | None:
        for i, v in enumerate(self.grid):
            if not v and not self.cand[i]:
                return f"nocand {cell(i, self.size)}"
        for u in self.units:
            have = 0
            for i in u:
                have |= (1 << self.grid[i]) | self.cand[i]
            if any(not have >> v & 1 for v in range(1, self.size + 1)):
                return INVALID
        return None

    def singles(self, lines: list[str]) -> bool:
        for i, v in enumerate(self.grid):
            m = self.cand[i]
            if not v and m and not m & (m - 1):
                val = m.bit_length() - 1
                self.place(i, val)
                lines.append(f"{cell(i, self.size)}={val}")
                return True
        for u in self.units:
            for val in range(1, self.size + 1):
                spots = [i for i in u if self.cand[i] >> val & 1]
                if len(spots) == 1 and all(self.grid[i] != val for i in u):
                    self.place(spots[0], val)
                    lines.append(f"{cell(spots[0], self.size)}={val}")
                    return True
        return False

    def eliminate(self) -> bool:
        changed = False
        for u in self.units:  # naked pairs
            pairs = [i for i in u if self.cand[i] and bin(self.cand[i]).count("1") == 2]
            for a, b in combinations(pairs, 2):
                if self.cand[a] == self.cand[b]:
                    for i in u:
                        if i not in (a, b) and self.cand[i] & self.cand[a]:
                            self.cand[i] &= ~self.cand[a]
                            changed = True
        n_lines = 2 * self.size
        for bi, box in enumerate(self.units[n_lines:]):  # locked candidates
            for line in self.units[:n_lines]:
                inside = set(box) & set(line)
                if len(inside) < 2:
                    continue
                for val in range(1, self.size + 1):
                    bit = 1 << val
                    in_box = [i for i in box if self.cand[i] & bit]
                    in_line = [i for i in line if self.cand[i] & bit]
                    if in_box and all(i in inside for i in in_box):  # pointing: clear the rest of the line
                        for i in line:
                            if i not in inside and self.cand[i] & bit:
                                self.cand[i] &= ~bit
                                changed = True
                    if in_line and all(i in inside for i in in_line):  # claiming: clear the rest of the box
                        for i in box:
                            if i not in inside and self.cand[i] & bit:
                                self.cand[i] &= ~bit
                                changed = True
        return changed


def solve_trace(puzzle: list[int], size: int) -> tuple[list[str], bool]:
    """(trace lines without the goal line, solved?) for a puzzle."""
    lines: list[str] = []

    def search(board: _Board) -> _Board | None:
        while True:
            if bad := board.contradiction():
                lines.append(bad)
                return None
            if board.singles(lines):
                continue
            if not board.eliminate():
                break
        blanks = [i for i, v in enumerate(board.grid) if not v]
        if not blanks:
            return board
        i = min(blanks, key=lambda k: (bin(board.cand[k]).count("1"), k))
        options = _values(board.cand[i])
        for k, val in enumerate(options):
            lines.append(f"guess {cell(i, size)} [{' '.join(map(str, options[k:]))}]={val}")
            child = board.copy()
            child.place(i, val)
            if (done := search(child)) is not None:
                return done
            lines.append(f"revert {cell(i, size)}")
        return None

    solved = search(_Board(puzzle, size))
    return lines, solved is not None


def direct_lines(trace: list[str]) -> list[str]:
    """The trace's surviving placements: guesses as placements, abandoned branches removed."""
    kept: list[str] = []
    marks: list[int] = []
    for line in trace:
        if m := GUESS_RE.fullmatch(line):
            marks.append(len(kept))
            kept.append(f"({m.group(1)},{m.group(2)})={m.group(4)}")
        elif REVERT_RE.fullmatch(line):
            del kept[marks.pop():]
        elif PLACE_RE.fullmatch(line):
            kept.append(line)
    return kept


def trace_text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines) + GOAL
