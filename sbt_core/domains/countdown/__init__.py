"""The Countdown domain: text format, verifier, solver, generator, traces, dataset import.

Reached from outside `sbt_core/domains/` only through `sbt_core.domains.DOMAINS["countdown"]`.
"""

from sbt_core.domains.countdown.verify import CATEGORIES, Verdict, verify

__all__ = ["CATEGORIES", "Verdict", "verify"]
