"""sbt core: Countdown self-backtracking, from data to search. No orchestration here."""

__version__ = "0.1.0"
