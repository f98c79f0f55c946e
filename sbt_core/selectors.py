"""Verifier-free selectors: which of a search's candidates becomes its answer.

A search (self-backtracking, best-of-N) ends with a pool of candidates, each with its mean token
log-probability (`score`) and, when sampled by our decoders, its `value` (`LM.value`: the model's own
log-probability of emitting no `<backtrack>` along it). A selector picks one of them without the
verifier; `choose(name, candidates, domain)` returns its index (None: an empty pool).

- `logprob`: the highest mean log-probability (the paper's negative perplexity; our searches' default).
- `released_sum`: the released code's rule (arXiv 2502.04404's repository): identical paths are grouped
  and their scores summed, the highest sum wins. Scores are negative, so a path found often ranks *below*
  one found once; it is here for fidelity, labelled so.
- `majority`: the most frequent final answer (`Domain.answer_key`), ties to the higher log-prob.
- `likelihood_vote`: answers weighted by likelihood: the answer whose candidates' sum of exp(score) (mean
  per-token probability) is highest.
- `value`: the highest `value`, ties to the higher log-prob: the model's `<backtrack>` head, trained on
  D_back to fire after a wrong step, read as a learned value of the whole path.

The ceiling is a perfect selector: any candidate verifies. `selection_gap` = ceiling − chosen.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

from sbt_core.domains import Domain

Candidates = list[dict]


def _logprob(cands: Candidates, domain: Domain) -> int:
    return max(range(len(cands)), key=lambda i: cands[i]["score"])


def _released_sum(cands: Candidates, domain: Domain) -> int:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cands):
        groups[c["response"]].append(i)
    best = max(groups.values(), key=lambda idx: sum(cands[i]["score"] for i in idx))
    return best[0]


def _by_answer(cands: Candidates, domain: Domain, weight: Callable[[dict], float]) -> int:
    """The best candidate of the answer with the largest summed weight; no readable answer: `logprob`."""
    groups: dict[object, list[int]] = defaultdict(list)
    for i, c in enumerate(cands):
        key = domain.answer_key(c["response"])
        if key is not None:
            groups[key].append(i)
    if not groups:
        return _logprob(cands, domain)
    best = max(groups.values(),
               key=lambda idx: (sum(weight(cands[i]) for i in idx), max(cands[i]["score"] for i in idx)))
    return max(best, key=lambda i: cands[i]["score"])


def _majority(cands: Candidates, domain: Domain) -> int:
    return _by_answer(cands, domain, lambda c: 1.0)


def _likelihood_vote(cands: Candidates, domain: Domain) -> int:
    return _by_answer(cands, domain, lambda c: math.exp(c["score"]))


def _value(cands: Candidates, domain: Domain) -> int:
    def key(i: int):
        v = cands[i].get("value")
        return (-math.inf if v is None else v, cands[i]["score"])

    return max(range(len(cands)), key=key)


SELECTORS: dict[str, Callable[[Candidates, Domain], int]] = {
    "logprob": _logprob,
    "released_sum": _released_sum,
    "majority": _majority,
    "likelihood_vote": _likelihood_vote,
    "value": _value,
}
LABELS = {
    "logprob": "max mean log-prob (default)",
    "released_sum": "released code's summed score (fidelity)",
    "majority": "majority answer",
    "likelihood_vote": "likelihood-weighted vote",
    "value": "learned value (<backtrack> probability)",
}


def choose(name: str, candidates: Candidates, domain: Domain) -> int | None:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose from {', '.join(SELECTORS)}")
    return SELECTORS[name](candidates, domain) if candidates else None


def per_problem(problems: list[dict], candidates: list[Candidates],
                domain: Domain) -> tuple[dict[str, list[bool]], list[list[bool]]]:
    """For each selector, and for the `ceiling`, whether its pick verifies (strict), problem by problem;
    and each candidate's verdict. Each candidate is verified once."""
    # `value` only where the engine reported it (vLLM does not: every candidate's value is None)
    absent = any(candidates) and all(c.get("value") is None for cs in candidates for c in cs)
    names = [n for n in SELECTORS if not (n == "value" and absent)]
    picks: dict[str, list[bool]] = {name: [] for name in [*names, "ceiling"]}
    verdicts = []
    for problem, cands in zip(problems, candidates):
        ok = [domain.verify(problem, c["response"]).correct for c in cands]
        for name in names:
            i = choose(name, cands, domain)
            picks[name].append(i is not None and ok[i])
        picks["ceiling"].append(any(ok))
        verdicts.append(ok)
    return picks, verdicts
