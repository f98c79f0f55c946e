"""Sudoku as a `Domain` (see `sbt_core/domains/base.py`): the registry's `sudoku` entry.

Prompt: `###Question: sudoku 1020 0301 ...` (the puzzle's rows, `0` for a blank), then
`###Response:`. Responses are the solver's line format (`solver.py`): the direct solution is
one placement per blank; a trace adds guesses, contradictions and reverts. D_back rows are a
prefix of the direct solution, one wrong placement, then `<backtrack>`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from sbt_core.domains.base import BACKTRACK, GOAL, RESPONSE_HEADER, Example, Verdict, line_roles, split_response
from sbt_core.domains.sudoku import generate, solver, verify
from sbt_core.domains.sudoku.config import GenerateConfig

_CELLS = tuple(f"({r},{c})" for r in range(1, 10) for c in range(1, 10))
# The error types of a wrong placement, in the order of build_data's `error_type_ratio`:
# a candidate that is not the solution's digit (a wrong turn a search would take), a digit its
# row, column or box already holds, and a digit written over a given.
ERROR_TYPES = ("exploration", "conflict", "given")


@lru_cache(maxsize=4096)
def _solve(puzzle: str) -> tuple[str, ...]:
    """The solver's trace lines (a recipe asks for the direct solution and the D_back rows of one puzzle)."""
    lines, solved = solver.solve_trace([int(ch) for ch in puzzle], verify.size_of(puzzle))
    if not solved:
        raise ValueError(f"puzzle {puzzle} has no solution")
    return tuple(lines)


ROLE_RULES = [re.compile(r) for r in (
    r"(?P<choice>\(\d+,\d+\))(?P<result>=\d+)",
    r"(?P<copy>guess )(?P<choice>\(\d+,\d+\))(?P<result> \[[\d ]+\])(?P<choice2>=\d+)",
    rf"(?P<verdict>(revert|nocand) \(\d+,\d+\)|invalid|{re.escape(GOAL)}|{re.escape(BACKTRACK)})",
)]


class Sudoku:
    name = "sudoku"
    GenerateConfig = GenerateConfig
    columns = ("puzzle", "solution")
    eval_splits = ("val",)
    split_labels = {"val": ("held-out (val)", "val")}
    categories = verify.CATEGORIES
    error_types = ERROR_TYPES
    at_target_error = None
    # arXiv 2504.07052's figures (`shared/reference/backtrack_study.md`): Qwen2 models from scratch, 200 puzzles.
    study_figures = {
        "setting": "9x9, about 24 givens",
        "matches": lambda g: g.get("size") == 9,
        "budgets": [400, 512, 1024, 2048, 4096], "ns": [1, 2, 4, 8, 16],
        "rows": {
            "17M DFS (greedy, by budget)": [10, 20.5, 45, 51, 53],
            "17M direct (best-of-n, by n)": [13, 25, 29.5, 44.5, 58],
            "38M DFS (greedy, by budget)": [9, 40.5, 66, 74.5, 77],
            "38M direct (best-of-n, by n)": [6.5, 16, 30, 39.5, 58],
        },
    }
    trace_styles = ("dfs", "direct")
    trace_formats = ("sbt",)  # our solver's text (the authors' Sudoku generator is not public)
    prompt_forms = ("question",)
    vocabularies = {
        "sudoku": (("###Question:", "###Response:", GOAL, "sudoku", "guess", "revert", "nocand", solver.INVALID)
                   + _CELLS, tuple("0123456789= []\n")),
    }

    def generate(self, cfg: GenerateConfig, out_dir: str, progress: Callable | None = None) -> dict[str, str]:
        return generate.run(cfg, out_dir, progress)

    def difficulty(self, cfg: GenerateConfig) -> int:
        return cfg.size

    def prompt(self, problem: dict, form: str = "question") -> str:
        if form != "question":
            raise ValueError(f"Sudoku prompts are {self.prompt_forms}, not {form!r}")
        p = problem["puzzle"]
        n = verify.size_of(p)
        return f"###Question: sudoku {' '.join(p[r * n:(r + 1) * n] for r in range(n))}\n{RESPONSE_HEADER}"

    def verify(self, problem: dict, response: str, strict: bool = True) -> Verdict:
        return verify.verify(problem["puzzle"], problem["solution"], response, strict)

    def extra_metrics(self, problem: dict, response: str) -> dict[str, float]:
        return {"cell_accuracy": verify.cell_accuracy(problem["puzzle"], problem["solution"], response)}

    def dead_ends(self, response: str) -> int:
        """Guesses taken back (`revert` lines) and `<backtrack>`s before the goal line."""
        body = self.final(response) if self.claims_goal(response) else response
        return sum(line.startswith("revert") for line in body.split("\n")) + body.count(BACKTRACK)

    def roles(self, response: str) -> list[tuple[int, int, str]]:
        """A placement's cell (choice) and digit (result); a guess's cell (choice), candidates (result) and digit
        tried (choice); a contradiction, a revert, `Goal Reached!`, `<backtrack>` (verdicts)."""
        return line_roles(response, ROLE_RULES)

    def claims_goal(self, response: str) -> bool:
        return GOAL in response

    def answer_key(self, response: str):
        """The placements that survive in the response, as a set: the grid it fills in, in any order (majority
        vote compares final grids)."""
        if not self.claims_goal(response):
            return None
        return frozenset(solver.direct_lines(split_response(response)[0]))

    def final(self, response: str) -> str:
        return response[: response.index(GOAL) + len(GOAL)]

    def _trace(self, problem: dict) -> list[str]:
        return list(_solve(problem["puzzle"]))

    def optimal(self, problem: dict) -> str:
        return solver.trace_text(solver.direct_lines(self._trace(problem)))

    def data_stats(self, problems) -> dict:
        return {}

    def backtrack_example(self, problem: dict, error_type: str, rng, at_target: bool = False,
                          stats: dict | None = None) -> Example:
        puzzle = problem["puzzle"]
        size = verify.size_of(puzzle)
        _, peers = solver.geometry(size)
        placements = solver.direct_lines(self._trace(problem))
        k = int(rng.integers(len(placements)))
        grid = verify.replay(puzzle, "\n".join(placements[:k]))
        m = solver.PLACE_RE.fullmatch(placements[k])
        i = (int(m.group(1)) - 1) * size + int(m.group(2)) - 1
        right = int(problem["solution"][i])
        held = {grid[p] for p in peers[i]} - {0}
        def wrong_turn():
            """A blank (the next one if it can) and a digit its peers allow that is not the solution's."""
            blanks = [i] + [j for j in rng.permutation(len(grid)).tolist() if not grid[j] and j != i]
            for j in blanks:
                allowed = set(range(1, size + 1)) - {grid[p] for p in peers[j]} - {int(problem["solution"][j])}
                if allowed:
                    return j, sorted(allowed)
            return i, []

        makers = {
            "exploration": wrong_turn,
            "conflict": lambda: (i, sorted(held - {right})),
            "given": lambda: (g := [j for j, ch in enumerate(puzzle) if ch != "0"],
                              j := g[int(rng.integers(len(g)))],
                              (j, sorted(set(range(1, size + 1)) - {int(puzzle[j])})))[-1],
        }
        for kind in ERROR_TYPES[ERROR_TYPES.index(error_type):] + ERROR_TYPES:
            cell, options = makers[kind]()
            if options:
                v = options[int(rng.integers(len(options)))]
                wrong = f"{solver.cell(cell, size)}={v}"
                return Example("".join(f"{p}\n" for p in placements[:k]) + f"{wrong}\n{BACKTRACK}", "backtrack",
                               kind, k)
        raise ValueError(f"no wrong placement possible for {puzzle}")

    def trace(self, problem: dict, style: str, rng, fmt: str = "sbt") -> str:
        if style == "dfs":
            return solver.trace_text(self._trace(problem))
        if style == "direct":
            return self.optimal(problem)
        raise ValueError(f"Sudoku writes trace styles {self.trace_styles}, not {style!r}")


SUDOKU = Sudoku()
