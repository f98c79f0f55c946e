"""Data recipes: what a model's SFT rows are. A recipe is one function plus one line in `RECIPES`.

A leaf module: it imports the domains' shared types and nothing of the config, so `config.py` validates
recipe names against `RECIPES` and `build_data.py` builds rows with them, neither importing the other.
The recipes themselves are described in `build_data`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from sbt_core.domains import Domain, Example

if TYPE_CHECKING:
    from sbt_core.config import BuildDataConfig


def optimal(domain: Domain, problem: dict, rng, cfg: BuildDataConfig, stats: dict) -> list[Example]:
    response = domain.optimal(problem)
    return [Example(response, "optimal", None, response.count("\n"))]


def self_backtrack(domain: Domain, problem: dict, rng, cfg: BuildDataConfig, stats: dict) -> list[Example]:
    weights = np.asarray(cfg.error_type_ratio, dtype=float)
    weights /= weights.sum()
    rows = optimal(domain, problem, rng, cfg, stats)
    n_back = int(cfg.backtrack_per_optimal) + int(rng.random() < cfg.backtrack_per_optimal % 1)
    for _ in range(n_back):
        kind = domain.error_types[rng.choice(len(domain.error_types), p=weights)]
        # Drawn only when asked for, so the paper's data (share 0) keeps its bytes.
        at_target = kind == domain.at_target_error and cfg.computational_at_target > 0 and (
            rng.random() < cfg.computational_at_target)
        rows.append(domain.backtrack_example(problem, kind, rng, at_target, stats))
    return rows


def _trace(style: str, kind: str = "trace") -> Callable[..., list[Example]]:
    def recipe(domain: Domain, problem: dict, rng, cfg: BuildDataConfig, stats: dict) -> list[Example]:
        response = domain.trace(problem, style, rng, cfg.trace_format or domain.trace_formats[0])
        return [Example(response, kind, None, response.count("\n"))]

    recipe.__name__ = f"{style}_trace"
    return recipe


@dataclass(frozen=True)
class Recipe:
    build: Callable[..., list[Example]]  # (domain, problem, rng, cfg, stats) -> rows
    label: str  # its model's name in reports ("SFT on ...")
    style: str | None = None  # the domain's trace style it needs; None: the step format
    study: str = "samples"  # how `sbt study` spends compute on its model (`study.KINDS`)

    def vocabulary(self, domain: Domain) -> str:
        """The tiny tokenizer's vocabulary for this recipe's text in `domain`."""
        traced = f"{domain.name}-trace"
        return traced if self.style and traced in domain.vocabularies else domain.name

    def check(self, domain: Domain, where: str) -> None:
        if self.style and self.style not in domain.trace_styles:
            raise ValueError(f"{where}: {domain.name} has no {self.style!r} traces (it writes {domain.trace_styles})")

    def prompt_form(self, domain: Domain, cfg: BuildDataConfig) -> str:
        """What the model is given (`BuildDataConfig.prompt`): by default a trace recipe's model is given the trace's
        first line where the domain writes one (arXiv 2504.07052's evaluation prompt), any other the question."""
        if cfg.prompt:
            return cfg.prompt
        return "state" if self.style and "state" in domain.prompt_forms else "question"

    def check_data(self, cfg: BuildDataConfig, domain: Domain, where: str) -> None:
        """`cfg`'s trace format and prompt are ones `domain` writes (and a state prompt is a trace's line)."""
        if cfg.trace_format and cfg.trace_format not in domain.trace_formats:
            raise ValueError(f"{where}.trace_format: {domain.name} writes traces as {domain.trace_formats}, "
                             f"not {cfg.trace_format!r}")
        form = self.prompt_form(domain, cfg)
        if form not in domain.prompt_forms or (form == "state" and not self.style):
            raise ValueError(f"{where}.prompt: {form!r} is not a prompt of {domain.name}'s {self.label!r} rows "
                             f"(a `state` prompt is a trace's first line; {domain.name} writes {domain.prompt_forms})")


RECIPES = {
    "optimal": Recipe(optimal, "SFT on optimal paths (D_op)"),
    "self_backtrack": Recipe(self_backtrack, "SFT on D_op ∪ D_back", study="search"),
    "dfs_trace": Recipe(_trace("dfs"), "SFT on DFS traces", "dfs", "budget"),
    "mix_trace": Recipe(_trace("mix"), "SFT on mix-backtracking traces", "mix", "budget"),
    "think_trace": Recipe(_trace("think"), "SFT on think-backtracking traces", "think", "budget"),
    "direct": Recipe(_trace("direct", "direct"), "SFT on direct solutions", "direct"),
}
