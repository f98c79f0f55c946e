"""Domains by name: `DOMAINS[name]` is the one object through which everything else reaches a domain."""

from __future__ import annotations

from sbt_core.domains.base import BACKTRACK, GOAL, Domain, Example, StrictConfig, Verdict
from sbt_core.domains.countdown.domain import COUNTDOWN
from sbt_core.domains.sudoku.domain import SUDOKU

DOMAINS: dict[str, Domain] = {"countdown": COUNTDOWN, "sudoku": SUDOKU}


def get(name: str) -> Domain:
    """The domain registered as `name`; a clear error naming the choices otherwise."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}")
    return DOMAINS[name]


__all__ = ["BACKTRACK", "DOMAINS", "GOAL", "Domain", "Example", "StrictConfig", "Verdict", "get"]
