"""The decoders and the named methods, as data: the config validates against this module and the
CLI lists it, and it imports nothing (no torch, nothing of the config).

A decoder is a function `(lm, problems, cfg, generator) -> list[Result]` in one of the modules that
`sbt_core.search.run` imports (`decoders`, `backtrack`, `reference`), plus one line in `DECODERS`:
its entry, the `SearchConfig` fields it reads, and one line of what it does. A method is a named
`SearchConfig` (a row of the paper's Table 1), one line in `METHODS`.
"""

from __future__ import annotations

from typing import NamedTuple


class Decoder(NamedTuple):
    entry: str  # "module:function"
    reads: tuple[str, ...]  # the SearchConfig fields it uses (beside max_new_tokens, batch_rows, seed)
    about: str


DECODERS: dict[str, Decoder] = {
    "greedy": Decoder("sbt_core.search.decoders:greedy", (), "the most likely token at each step"),
    "beam": Decoder("sbt_core.search.decoders:beam", ("n",), "beam search with n beams (HF generate)"),
    "sample": Decoder("sbt_core.search.decoders:sample", ("temperature",), "one temperature sample"),
    "best_of_n": Decoder("sbt_core.search.decoders:best_of_n", ("n", "temperature", "selector"),
                         "n samples, the best by the selector (oracle: pass@n)"),
    "majority": Decoder("sbt_core.search.decoders:majority", ("n", "temperature"),
                        "n samples, the most frequent answer"),
    "self_backtrack": Decoder("sbt_core.search.backtrack:self_backtrack", ("n", "backtrack_budget", "temperature"),
                              "the paper's search: n samples, <backtrack> rolled back and re-expanded b times"),
    "reference": Decoder("sbt_core.search.reference:reference", ("n", "backtrack_budget", "temperature"),
                         "the paper's released decoder, one problem at a time (HF beam-sample)"),
}

# Named methods, as rows of the paper's Table 1 (plus pass@N, which consults the verifier).
METHODS: dict[str, dict] = {
    "greedy": dict(decoder="greedy"),
    "beam": dict(decoder="beam", n=5),
    "best_of_n_8": dict(decoder="best_of_n", n=8),
    "best_of_n_16": dict(decoder="best_of_n", n=16),
    "best_of_n_32": dict(decoder="best_of_n", n=32),
    "pass_at_16": dict(decoder="best_of_n", n=16, selector="oracle"),
    "majority_16": dict(decoder="majority", n=16),
    "sbt_b0_n8": dict(decoder="self_backtrack", n=8, backtrack_budget=0),
    "sbt_b0_n16": dict(decoder="self_backtrack", n=16, backtrack_budget=0),
    "sbt_b0_n32": dict(decoder="self_backtrack", n=32, backtrack_budget=0),
    "sbt_b1_n8": dict(decoder="self_backtrack", n=8, backtrack_budget=1),
    "sbt_b1_n16": dict(decoder="self_backtrack", n=16, backtrack_budget=1),
    "sbt_b1_n32": dict(decoder="self_backtrack", n=32, backtrack_budget=1),
    "sbt_b2_n8": dict(decoder="self_backtrack", n=8, backtrack_budget=2),
    "sbt_b2_n16": dict(decoder="self_backtrack", n=16, backtrack_budget=2),
    "sbt_b2_n32": dict(decoder="self_backtrack", n=32, backtrack_budget=2),
    "reference_b1_n32": dict(decoder="reference", n=32, backtrack_budget=1),
}
DEFAULT_METHODS = ["greedy", "best_of_n_16", "pass_at_16", "sbt_b0_n16", "sbt_b0_n32", "sbt_b1_n16", "sbt_b1_n32"]


def help_text() -> str:
    """One line per decoder, for the CLI."""
    return "; ".join(f"{name}: {d.about}" + (f" ({', '.join(d.reads)})" if d.reads else "")
                     for name, d in DECODERS.items())
