"""What every domain provides, and the pieces domains share.

A domain is one folder under `sbt_core/domains/` whose `domain.py` defines an object with the
attributes and methods of `Domain`, plus one line in `DOMAINS` (`sbt_core/domains/__init__.py`).
Nothing outside `sbt_core/domains/` imports a domain's modules: the pipeline, the search, the
trainer and the report reach a domain only through the registry, by name.

Problems are dicts (rows of the domain's `train.parquet` / eval splits); a response is the text
after the prompt. Every response format is line-based: one step per line, which is what the
self-backtracking decoder rolls back and what the loss masks on a `<backtrack>` row.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from sbt_core import io

log = logging.getLogger(__name__)

GOAL = "Goal Reached!"
BACKTRACK = "<backtrack>"
RESPONSE_HEADER = "###Response:\n"


def split_response(response: str) -> tuple[list[str], str | None, str]:
    """Split a response into (step lines, terminator, trailing text).

    The terminator is `Goal Reached!`, `<backtrack>` or None; step lines are the lines
    before the first terminator line; trailing is what follows the terminator line.
    """
    lines = response.split("\n")
    for i, line in enumerate(lines):
        if line in (GOAL, BACKTRACK):
            return lines[:i], line, "\n".join(lines[i + 1 :])
    return lines, None, ""


# What writing a span of a response takes: `choice` which step to take (operands, a cell), `result` what the step
# gives (arithmetic, a digit), `verdict` a claim about the search (goal, dead end, `<backtrack>`), `copy` restating
# what is already written (states, node lines, fixed words).
ROLES = ("choice", "result", "verdict", "copy")


def line_roles(response: str, rules: list[re.Pattern]) -> list[tuple[int, int, str]]:
    """(start, end, role) spans of `response` by the first rule each line fully matches: every named group that
    matched is a span whose role is the group's name without trailing digits (`copy2` is `copy`)."""
    spans, at = [], 0
    for line in response.split("\n"):
        for rule in rules:
            m = rule.fullmatch(line)
            if m:
                spans += [(at + m.start(g), at + m.end(g), g.rstrip("0123456789"))
                          for g in rule.groupindex if m.start(g) >= 0 and m.end(g) > m.start(g)]
                break
        at += len(line) + 1
    return sorted(spans)


class StrictConfig(BaseModel):
    """Base of every config model: unknown keys refused, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    category: str
    detail: str = ""
    step: int = -1  # index of the failing step line, -1 when not about one step
    mode: str = "strict"


@dataclass(frozen=True)
class Example:
    """One SFT row a recipe writes for a problem."""

    response: str
    kind: str  # optimal | backtrack | trace | direct
    error_type: str | None = None
    prefix_len: int = 0


class Domain(Protocol):
    name: ClassVar[str]
    GenerateConfig: ClassVar[type[StrictConfig]]  # its `domain` field is the registry name
    columns: ClassVar[tuple[str, ...]]  # problem columns the data splits carry (besides `id`)
    eval_splits: ClassVar[tuple[str, ...]]  # splits an evaluation reads, the held-out one last
    # What reports call each eval split: (heading, short form), e.g. ("new targets", "new").
    split_labels: ClassVar[dict[str, tuple[str, str]]]
    categories: ClassVar[tuple[str, ...]]  # verdict categories, "correct" first
    error_types: ClassVar[tuple[str, ...]]  # D_back error types, in the order of build_data's ratio
    # The error type whose wrong result may be the target (`BuildDataConfig.computational_at_target`); None: none.
    at_target_error: ClassVar[str | None]
    # The second paper's figures on this domain (arXiv 2504.07052; `study` prints them beside ours), or None:
    # {"setting", "matches" (a generate-config dict -> bool), "budgets", "ns", "rows": {label: [% solved]}}.
    study_figures: ClassVar[dict | None]
    # Tokenizer vocabularies by name: fixed phrases (one token each) and single characters.
    vocabularies: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]
    # Trace styles this domain writes (`trace(problem, style, rng, fmt)`), e.g. dfs, mix, think, direct.
    trace_styles: ClassVar[tuple[str, ...]]
    trace_formats: ClassVar[tuple[str, ...]]  # the texts it can write them in, the default first
    prompt_forms: ClassVar[tuple[str, ...]]  # `prompt(problem, form)`'s forms, `question` first

    def generate(self, cfg: Any, out_dir: str, progress: Callable | None = None) -> dict[str, str]: ...
    def prompt(self, problem: dict, form: str = "question") -> str: ...
    def verify(self, problem: dict, response: str, strict: bool = True) -> Verdict: ...
    def claims_goal(self, response: str) -> bool: ...
    def answer_key(self, response: str) -> Any: ...  # what majority vote counts; None: no answer
    def final(self, response: str) -> str: ...  # the response cut after its goal line (distillation)
    def optimal(self, problem: dict) -> str: ...  # D_op's response
    # A D_back row: an optimal prefix, one wrong step of `error_type` (one of `error_types`), `<backtrack>`;
    # `stats` is what `data_stats` measured on the whole train split (build_data passes it).
    def backtrack_example(self, problem: dict, error_type: str, rng, at_target: bool = False,
                          stats: dict | None = None) -> Example: ...
    def trace(self, problem: dict, style: str, rng, fmt: str) -> str: ...  # a search trace (or the direct path)
    def data_stats(self, problems: pa.Table) -> dict: ...  # dataset-wide figures the error builders use
    def extra_metrics(self, problem: dict, response: str) -> dict[str, float]: ...  # averaged in evaluations
    def dead_ends(self, response: str) -> int: ...  # wrong branches abandoned before the answer (or the end)
    def difficulty(self, cfg: Any) -> Any: ...  # the generator setting a ladder's trend holds fixed
    # What writing each part of a response takes, as (start, end, role) character spans, role one of ROLES
    # (`sbt probe` scores a model's next-token guesses by role; text in no span is `other`).
    def roles(self, response: str) -> list[tuple[int, int, str]]: ...


def write_splits(tables: dict[str, pa.Table], cfg: StrictConfig, out_dir: str) -> dict[str, str]:
    """A generator's stage output: one `<split>.parquet` per table and the manifest; returns their URIs."""
    uris = {name: io.write_parquet(t, io.join(out_dir, f"{name}.parquet")) for name, t in tables.items()}
    io.write_manifest(out_dir, "generate", cfg.model_dump(mode="json"), [], uris)
    log.info("generate: %s", {k: len(v) for k, v in tables.items()})
    return uris
