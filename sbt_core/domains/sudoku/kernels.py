"""The Sudoku generator's compiled (numba) bitmask solver, imported by `grid` on first use: importing numba
loads llvmlite, whose library wrapper breaks vLLM's start-up scan of loaded modules, so a process that only
samples never loads it."""

import numba
import numpy as np


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
