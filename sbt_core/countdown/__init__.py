"""The Countdown domain: text format, verifier, solver, generator, dataset import."""

from sbt_core.countdown.verify import CATEGORIES, Verdict, verify

__all__ = ["CATEGORIES", "Verdict", "verify"]
