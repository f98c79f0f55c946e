"""The compute ladder: where does self-backtracking start to pay?

A ladder is a base run config and a list of rungs, each a few overrides of it (model size, SFT
steps, the number of Countdown numbers). Each rung trains one model (the base config's backtracking
model, D_op ∪ D_back) through the pipeline's stages and evaluates greedy decoding, best-of-32 and
self-backtracking (b=1, N=32) on the held-out split. `sbt_core.reports.ladder` reads what the stages
wrote and puts the rungs on one axis, training compute:

- training FLOPs = 6·N·D (`train/flops`: N parameters, D tokens processed);
- each accuracy with its 95% Wilson interval; the any-candidate ceiling of the search (a perfect
  selector) and every verifier-free selector of `selectors` on the same candidates;
- the gain over greedy (search − greedy on the same problems) with its paired 95% interval;
- the search's false-claim rate (answers that claim the target but fail the verifier) and the share of
  those that are computation errors;
- a log-linear trend of the gain against training FLOPs over the rungs of the base setting, with the
  compute where it would reach +10 and +40 points.

Config (`configs/ladder-cpu.yaml`): `name`, `base` (a preset name or path, or a mapping), `set` (overrides
for every rung), `rungs: {name: overrides}`, `model`, `methods`, `search`. Overrides are dotted paths or
nested mappings: `{sft.max_steps: 3600}` or `{sft: {max_steps: 3600}}`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator, model_validator

from sbt_core.config import (ConfigError, ExecutionConfig, OnPolicyConfig, RunConfig, _apply, _Config,
                             _known_methods, _load_tree, _named, _set_dotted, _validate)


class LadderConfig(_Config):
    name: str = Field("ladder", description="Ladder name (runs/<name>/ by default; a YAML without "
                      "one: its file's name).")
    model: str = Field("bt", description="The model of each rung's config that the rung trains and evaluates.")
    methods: list[str] = Field(["greedy", "best_of_n_32", "sbt_b1_n32"], description="Methods evaluated per rung.")
    baseline: str = Field("greedy", description="The method the gain is measured against.")
    search: str = Field("sbt_b1_n32", description="The self-backtracking search whose gain is reported.")
    best_of: str | None = Field("best_of_n_32", description="The sampling baseline at the search's N (None: none).")
    rungs: dict[str, RunConfig] = Field(description="Rung name -> its run config (base + set + the rung's own).")
    onpolicy: dict[str, OnPolicyConfig] = Field({}, description="Rung name -> on-policy D_back for it: the rung "
                                                "trains on its data plus the wrong steps of `source` (a lever, "
                                                "left out of the trend).")
    execution: ExecutionConfig = ExecutionConfig()

    _methods = field_validator("methods")(_known_methods)

    @model_validator(mode="after")
    def _consistent(self):
        if not self.rungs:
            raise ValueError("rungs: a ladder needs at least one rung")
        for name, rung in self.rungs.items():
            if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or not name[0].isalnum():
                raise ValueError(f"rungs.{name}: a rung name is letters, digits, '.', '-' and '_' (it names a folder)")
            if self.model not in rung.models:
                raise ValueError(f"model: {self.model!r} is not one of rungs.{name}.models ({', '.join(rung.models)})")
        names = list(self.rungs)
        for name, op in self.onpolicy.items():
            if name not in self.rungs:
                raise ValueError(f"onpolicy.{name}: not one of rungs ({', '.join(names)})")
            if op.source in self.rungs and names.index(op.source) >= names.index(name):
                raise ValueError(f"onpolicy.{name}.source: rung {op.source!r} must come before {name!r}")
        for field in ("baseline", "search", "best_of"):
            value = getattr(self, field)
            if value is not None and value not in self.methods:
                raise ValueError(f"{field}: {value!r} is not one of methods ({', '.join(self.methods)})")
        return self


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted path: leaf value}; dotted keys may also be given directly."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def load_ladder_config(path: str | Path, overrides: list[str] = (),
                       resolve: Callable[[str], Path] = Path) -> LadderConfig:
    """A ladder YAML plus `key=value` overrides (e.g. `set.eval.limit=50`, `rungs.1m-1800.sft.max_steps=10`).
    `resolve` turns `base: tiny` into a path (the CLI: configs/tiny.yaml)."""
    tree = _apply(_named(_load_tree(path), path), list(overrides), LadderConfig)
    base = tree.pop("base", {})
    if isinstance(base, str):
        base = _load_tree(resolve(base))
    if not isinstance(base, dict):
        raise ConfigError(f"invalid configuration ({path}):\nbase: a preset name, a path or a mapping")
    shared = _flatten(tree.pop("set", None) or {})
    rungs = {}
    for name, own in (tree.get("rungs") or {}).items():
        rung = copy.deepcopy(base)
        for dotted, value in {**shared, **_flatten(own or {})}.items():
            _set_dotted(rung, dotted, value)
        rung["name"] = f"{tree.get('name', 'ladder')}-{name}"
        rungs[name] = rung
    tree["rungs"] = rungs
    return _validate(LadderConfig, tree, path)
