"""Countdown's generation settings (`generate:` in a preset whose `domain` is countdown)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sbt_core.domains.base import StrictConfig


def largest_value(count: int, top: int) -> int:
    """The largest value + - * / can make from `count` numbers of at most `top` (all equal to `top`: + and *
    grow with their operands, - and / do not)."""
    best = [0, top]
    for k in range(2, count + 1):
        best.append(max(max(best[i] + best[k - i], best[i] * best[k - i]) for i in range(1, k)))
    return best[count]


class GenerateConfig(StrictConfig):
    domain: Literal["countdown"] = Field("countdown", description="The domain these settings are for.")
    seed: int = Field(0, description="Seed for every random draw of the generator.")
    num_numbers: int = Field(4, ge=2, le=6, description="Numbers per problem (the paper: 4).")
    number_min: int = Field(1, ge=0, description="Smallest number drawn (inclusive).")
    number_max: int = Field(99, ge=1, le=10_000, description="Largest number drawn (inclusive).")
    target_min: int = Field(10, ge=0, description="Smallest target (inclusive).")
    target_max: int = Field(100, ge=1, description="Largest target (inclusive).")
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="Share of targets held out for val_new.")
    num_train: int = Field(500_000, ge=1, description="Problems in the train split.")
    num_val_seen: int = Field(1000, ge=0, description="Problems in val_seen (seen targets, not in train).")
    num_val_new: int = Field(1000, ge=0, description="Problems in val_new (held-out targets).")
    workers: int = Field(0, ge=0, description="Worker processes; 0 = one per CPU core.")
    chunk_size: int = Field(4096, ge=64, description="Problems per work unit (output does not depend on it).")

    @model_validator(mode="after")
    def _ranges(self):
        if self.number_min > self.number_max:
            raise ValueError("number_min must be <= number_max")
        if self.target_min > self.target_max:
            raise ValueError("target_min must be <= target_max")
        if (top := largest_value(self.num_numbers, self.number_max)) < self.target_min:
            raise ValueError(f"no target is reachable: {self.num_numbers} numbers up to {self.number_max} make at "
                             f"most {top}, below target_min {self.target_min}")
        return self

    @property
    def total(self) -> int:
        return self.num_train + self.num_val_seen + self.num_val_new
