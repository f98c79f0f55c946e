"""Countdown as a `Domain` (see `sbt_core/domains/base.py`): the registry's `countdown` entry."""

from __future__ import annotations

import re
from typing import Callable

import pyarrow as pa

from sbt_core.domains.base import BACKTRACK, Example, Verdict, line_roles
from sbt_core.domains.countdown import backtrack, generate, trace
from sbt_core.domains.countdown.config import GenerateConfig
from sbt_core.domains.countdown.format import GOAL, format_prompt, parse_step, solution_steps
from sbt_core.domains.countdown.verify import CATEGORIES, verify

# The step format's phrases and characters, as the tiny tokenizer has always had them (ids unchanged).
_STEP_PHRASES = ("###Question:", "###Response:", GOAL, "->target", "numbers")
_STEP_CHARS = tuple("0123456789+-*/=[], \n")


_OP = r"\d+ ?[-+*/] ?\d+"
ROLE_RULES = [re.compile(r) for r in (
    rf"(?P<choice>{_OP})(?P<result> ?= ?\d+)",
    rf"(?P<copy>Exploring Operation: )(?P<choice>{_OP})(?P<result>=\d+)(?P<copy2>, Resulting Numbers: .*)",
    r"(?P<copy>\d+,\d+)(?P<verdict> (un)?equal: .*)",
    r"(?P<choice>\[\d+, \d+\])(?P<verdict> No Solution)",
    r"(?P<copy>(Current State:|Generated Node|Moving to Node) .*)",
    rf"(?P<verdict>{re.escape(GOAL)}|{re.escape(BACKTRACK)}|No solution found\.)",
)]


class Countdown:
    """Reach the target with + - * / using every number once (arXiv 2502.04404 and 2504.07052)."""

    name = "countdown"
    GenerateConfig = GenerateConfig
    columns = ("nums", "target")
    eval_splits = ("val_seen", "val_new")
    split_labels = {"val_seen": ("seen targets", "seen"), "val_new": ("new targets", "new")}
    categories = CATEGORIES
    error_types = backtrack.ERROR_TYPES
    at_target_error = "computational"
    # arXiv 2504.07052's figures (`shared/reference/backtrack_study.md`): Qwen2 models from scratch, 200 problems.
    study_figures = {
        "setting": "4 numbers in 1..99",
        "matches": lambda g: g.get("num_numbers") == 4 and g.get("number_max") == 99,
        "budgets": [256, 512, 1024, 2048, 4096], "ns": [1, 2, 4, 8, 16],
        "rows": {
            "3M DFS (greedy, by budget)": [10.5, 13.5, 28.5, 33.5, 41.5],
            "3M direct (best-of-n, by n)": [8.5, 20.5, 30, 41.5, 52],
            "17M DFS (greedy, by budget)": [7.5, 11.5, 25.5, 35, 41.5],
            "17M mix (greedy, by budget)": [12.5, 17.5, 32, 41, 51],
            "17M think (greedy, by budget)": [17, 28.5, 45.5, 53.5, 59.5],
            "17M direct (best-of-n, by n)": [17, 25, 37, 50, 61],
        },
    }
    trace_styles = trace.STYLES
    trace_formats = trace.FORMATS
    # `question`: the first paper's `###Question: ...` header; `state`: the trace's first line, the root
    # `Current State` (the released evaluation's prompt of arXiv 2504.07052, so the model never copies the numbers).
    prompt_forms = ("question", "state")
    vocabularies = {
        "countdown": (_STEP_PHRASES, _STEP_CHARS),
        "countdown-trace": (_STEP_PHRASES + trace.PHRASES, _STEP_CHARS + trace.CHARS),
    }

    def generate(self, cfg: GenerateConfig, out_dir: str, progress: Callable | None = None) -> dict[str, str]:
        return generate.run(cfg, out_dir, progress)

    def prompt(self, problem: dict, form: str = "question") -> str:
        if form == "state":
            return trace.first_line(problem["nums"], problem["target"]) + "\n"
        if form != "question":
            raise ValueError(f"Countdown prompts are {self.prompt_forms}, not {form!r}")
        return format_prompt(problem["nums"], problem["target"])

    def difficulty(self, cfg: GenerateConfig) -> int:
        return cfg.num_numbers

    def verify(self, problem: dict, response: str, strict: bool = True) -> Verdict:
        """Step responses as they are; a search trace by the path it claims (see `trace`)."""
        if isinstance(response, str) and trace.is_trace(response):
            claimed = trace.as_solution(response)
            if claimed is None:
                return Verdict(False, "not_reached", "the trace claims no goal", mode="strict" if strict else "paper")
            response = claimed
        return verify(problem["nums"], problem["target"], response, strict=strict)

    def extra_metrics(self, problem: dict, response: str) -> dict[str, float]:
        return {}

    def dead_ends(self, response: str) -> int:
        """Branches given up before the goal line: a trace's `No Solution` leaves and pairs, or `<backtrack>`s."""
        lines = response.split("\n")
        end = next((i for i, line in enumerate(lines) if trace.REACHED in line), len(lines))
        body = "\n".join(lines[: end + 1])
        return body.count("No Solution") + body.count(BACKTRACK)

    def roles(self, response: str) -> list[tuple[int, int, str]]:
        """The compact format's `a op b=c` (choice, result), the traces' explored operation (choice, result, the
        rest copy), state and node lines (copy), leaf and pair verdicts; `Goal Reached!`, `<backtrack>` verdicts."""
        return line_roles(response, ROLE_RULES)

    def claims_goal(self, response: str) -> bool:
        return trace.REACHED in response  # `Goal Reached!` and a trace's `equal: Goal Reached`

    def steps(self, response: str) -> list[str]:
        if trace.is_trace(response):
            return trace.final_steps(response) or []
        return solution_steps(response)

    def answer_key(self, response: str):
        """A right Countdown answer always ends at the target, so the answer is the path: its steps as a multiset."""
        return tuple(sorted(self.steps(response))) if self.claims_goal(response) else None

    def final(self, response: str) -> str:
        if trace.is_trace(response):
            lines = response.split("\n")
            end = next(i for i, line in enumerate(lines) if line.endswith(f" equal: {trace.REACHED}"))
            return "\n".join(lines[: end + 1])
        return response[: response.index(GOAL) + len(GOAL)]

    def optimal(self, problem: dict) -> str:
        return problem["solution"]

    def data_stats(self, problems: pa.Table) -> dict:
        """Dataset-wide figures the error builders use: the largest number (for absent numbers)."""
        return {"number_max": max((max(n) for n in problems["nums"].to_pylist()), default=99)}

    def backtrack_example(self, problem: dict, error_type: str, rng, at_target: bool = False,
                          stats: dict | None = None) -> Example:
        steps = [parse_step(line) for line in solution_steps(problem["solution"])]
        response, used, prefix_len = backtrack.backtrack_example(
            problem["nums"], problem["target"], steps, error_type, rng, (stats or {}).get("number_max", 99), at_target)
        return Example(response, "backtrack", used, prefix_len)

    def trace(self, problem: dict, style: str, rng, fmt: str = trace.FORMATS[0]) -> str:
        steps = [parse_step(line) for line in solution_steps(problem["solution"])] if fmt == "sbt" else None
        return trace.write(problem["nums"], problem["target"], style, rng, steps, fmt)

    def load_released(self, source: str, split: str = "train"):
        """The first paper's released SFT rows (`sbt import-dataset`'s sources) as a `datasets.Dataset` with
        `prompt` and `response` columns."""
        from sbt_core.domains.countdown import importer

        return importer.sft_dataset(source, split)

    def import_released(self, source: str, out_dir: str, split: str = "train") -> dict[str, str]:
        from sbt_core.domains.countdown import importer

        return importer.run(source, out_dir, split)


COUNTDOWN = Countdown()
