"""Sudoku grids and the generator's fast core: a compiled (numba) bitmask solver (`kernels`).

A grid is a flat int8 array of size*size cells, row-major, 0 for a blank. `fill` draws a random
complete grid (depth-first search over cells, fewest candidates first, values in a random
order); `count` counts solutions up to a limit (2 proves uniqueness); `dig` removes clues in a
random order, keeping each removal only while the solution stays unique, down to a number of
givens or to a minimal puzzle. Every random draw comes from the seed passed in, so a puzzle
depends only on its seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from sbt_core.domains.sudoku.config import BOXES


@lru_cache(maxsize=None)
def geometry(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, box) index of every cell."""
    br, bc = BOXES[size]
    cells = np.arange(size * size)
    rows, cols = cells // size, cells % size
    boxes = (rows // br) * (size // bc) + cols // bc
    return rows.astype(np.int64), cols.astype(np.int64), boxes.astype(np.int64)


def make(seed: int, size: int, givens: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One uniquely solvable puzzle and its solution, from `seed` (a uint32)."""
    from sbt_core.domains.sudoku.kernels import _make

    rows, cols, boxes = geometry(size)
    return _make(np.uint32(seed), size, -1 if givens is None else givens, rows, cols, boxes)


def count(grid, size: int, limit: int = 2) -> int:
    """Number of solutions of `grid`, counting stops at `limit`."""
    from sbt_core.domains.sudoku.kernels import _count

    rows, cols, boxes = geometry(size)
    return int(_count(np.asarray(grid, np.int64), rows, cols, boxes, size, limit))


def to_str(grid) -> str:
    return "".join(str(int(v)) for v in grid)


def from_str(text: str) -> list[int]:
    return [int(ch) for ch in text]
