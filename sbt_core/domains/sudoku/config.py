"""Sudoku's generation settings (`generate:` in a preset whose `domain` is sudoku)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sbt_core.domains.base import StrictConfig

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # size -> (box rows, box columns)


class GenerateConfig(StrictConfig):
    domain: Literal["sudoku"] = Field("sudoku", description="The domain these settings are for.")
    seed: int = Field(0, description="Seed for every random draw of the generator.")
    size: Literal[4, 6, 9] = Field(9, description="Grid size: 4 (2x2 boxes), 6 (2x3 boxes) or 9 (3x3 boxes).")
    givens: int | None = Field(
        None, ge=0, description="Difficulty: remove clues down to this many givens while the solution stays "
        "unique (fewer is harder); None digs until every remaining clue is needed (a minimal puzzle).")
    num_train: int = Field(100_000, ge=1, description="Puzzles in the train split.")
    num_val: int = Field(1000, ge=0, description="Puzzles in val (none of them in train).")
    workers: int = Field(0, ge=0, description="Worker processes; 0 = one per CPU core.")
    chunk_size: int = Field(1024, ge=16, description="Puzzles per work unit (output does not depend on it).")

    @model_validator(mode="after")
    def _givens(self):
        if self.givens is not None and self.givens > self.size * self.size:
            raise ValueError(f"givens must be at most {self.size * self.size} for a {self.size}x{self.size} grid")
        return self

    @property
    def total(self) -> int:
        return self.num_train + self.num_val
