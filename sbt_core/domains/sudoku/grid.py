"""Sudoku grids and the generator's fast core: a compiled (numba) bitmask solver.

A grid is a flat int8 array of size*size cells, row-major, 0 for a blank. `fill` draws a random
complete grid (depth-first search over cells, fewest candidates first, values in a random
order); `count` counts solutions up to a limit (2 proves uniqueness); `dig` removes clues in a
random order, keeping each removal only while the solution stays unique, down to a number of
givens or to a minimal puzzle. Every random draw comes from the seed passed in, so a puzzle
depends only on its seed.
"""

from __future__ import annotations

from functools import lru_cache

import numba
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


@numba.njit(cache=True)
def _popcount(m):
    c = 0
    while m:
        m &= m - 1
        c += 1
    return c


@numba.njit(cache=True)
def _search(grid, rows, cols, boxes, rm, cm, bm, full, limit, randomise):
    """Solutions of `grid` up to `limit`, by depth-first search (fewest candidates first), without
    recursion (numba's cache cannot hold recursive functions). With `randomise`, values are tried
    in a random order and the grid is left holding the `limit`-th solution found."""
    n = grid.shape[0]
    cells = np.zeros(n + 1, np.int64)
    order = np.zeros((n + 1, 16), np.int64)
    count = np.zeros(n + 1, np.int64)
    pos = np.zeros(n + 1, np.int64)
    depth, found, choose = 0, 0, True
    while True:
        if choose:
            choose = False
            best, best_n, best_mask = -1, 100, 0
            for i in range(n):
                if grid[i] == 0:
                    m = full & ~(rm[rows[i]] | cm[cols[i]] | bm[boxes[i]])
                    k = _popcount(m)
                    if k < best_n:
                        best, best_n, best_mask = i, k, m
                        if k <= 1:
                            break
            if best < 0:  # full grid: a solution
                found += 1
                if found >= limit:
                    return found
                depth -= 1
            elif best_n == 0:  # dead end
                depth -= 1
            else:
                cells[depth], count[depth], pos[depth] = best, best_n, 0
                k = 0
                for v in range(1, 17):
                    if best_mask & (1 << v):
                        order[depth, k] = v
                        k += 1
                if randomise:
                    np.random.shuffle(order[depth, :k])
            if depth < 0:
                return found
        i = cells[depth]
        r, c, b = rows[i], cols[i], boxes[i]
        if pos[depth] > 0:  # take back the value tried last at this depth
            bit = 1 << order[depth, pos[depth] - 1]
            rm[r] &= ~bit
            cm[c] &= ~bit
            bm[b] &= ~bit
            grid[i] = 0
        if pos[depth] >= count[depth]:
            depth -= 1
            if depth < 0:
                return found
            continue
        v = order[depth, pos[depth]]
        pos[depth] += 1
        bit = 1 << v
        rm[r] |= bit
        cm[c] |= bit
        bm[b] |= bit
        grid[i] = v
        depth += 1
        choose = True


@numba.njit(cache=True)
def _masks(grid, rows, cols, boxes, size):
    rm = np.zeros(size, np.int64)
    cm = np.zeros(size, np.int64)
    bm = np.zeros(size, np.int64)
    for i in range(grid.shape[0]):
        if grid[i]:
            bit = 1 << grid[i]
            rm[rows[i]] |= bit
            cm[cols[i]] |= bit
            bm[boxes[i]] |= bit
    return rm, cm, bm


@numba.njit(cache=True)
def _count(grid, rows, cols, boxes, size, limit):
    g = grid.copy()
    rm, cm, bm = _masks(g, rows, cols, boxes, size)
    full = ((1 << (size + 1)) - 1) & ~1
    return _search(g, rows, cols, boxes, rm, cm, bm, full, limit, False)


@numba.njit(cache=True)
def _make(seed, size, givens, rows, cols, boxes):
    """(puzzle, solution) for one seed."""
    np.random.seed(seed)
    n = size * size
    solution = np.zeros(n, np.int64)
    rm, cm, bm = _masks(solution, rows, cols, boxes, size)
    full = ((1 << (size + 1)) - 1) & ~1
    _search(solution, rows, cols, boxes, rm, cm, bm, full, 1, True)
    puzzle = solution.copy()
    left = n
    for i in np.random.permutation(n):
        if left <= givens:
            break
        v = puzzle[i]
        puzzle[i] = 0
        if _count(puzzle, rows, cols, boxes, size, 2) == 1:
            left -= 1
        else:
            puzzle[i] = v
    return puzzle, solution


def make(seed: int, size: int, givens: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One uniquely solvable puzzle and its solution, from `seed` (a uint32)."""
    rows, cols, boxes = geometry(size)
    return _make(np.uint32(seed), size, -1 if givens is None else givens, rows, cols, boxes)


def count(grid, size: int, limit: int = 2) -> int:
    """Number of solutions of `grid`, counting stops at `limit`."""
    rows, cols, boxes = geometry(size)
    return int(_count(np.asarray(grid, np.int64), rows, cols, boxes, size, limit))


def to_str(grid) -> str:
    return "".join(str(int(v)) for v in grid)


def from_str(text: str) -> list[int]:
    return [int(ch) for ch in text]
