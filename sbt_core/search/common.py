"""What every decoder shares: the model wrapper and the per-problem result record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from sbt_core import domains
from sbt_core.domains import BACKTRACK, Domain
from sbt_core.models import prompt_form
from sbt_core.search.sampling import Sampled, row_keys, sample


@dataclass
class Result:
    """One problem's search outcome."""

    output: str  # the chosen response (text after `###Response:\n`)
    candidates: list[dict] = field(default_factory=list)  # {"response", "score", "value"}
    generated_tokens: int = 0
    forward_passes: int | None = 0  # None: the engine does not report its model calls (vLLM)
    rounds: int = 0


@dataclass(frozen=True)
class Shard:
    """A unit of a stage's work another process can run: `entry` ("module:function") called with `kwargs`
    (JSON: configs as dicts), writing its files under the stage's folder. `name` is unique in the stage."""

    name: str
    entry: str
    kwargs: dict[str, Any]


# Runs units elsewhere (at once, across workers) and returns once each has completed; raises if any failed.
FanOut = Callable[[list[Shard]], None]


def group(units: list[Shard], size: int) -> list[Shard]:
    """`units` packed `size` to a unit, in order, so that a pool runs fewer, longer units (each run's start costs
    seconds: a process, imports, a model load). A pack of one is its unit; a pack of several is named after its
    first unit (`<name>+<k more>`) and runs them one after another (`run_packed`), consecutive shards of one search
    (the same entry and arguments but `shards`) as one call, so they share the loaded model."""
    if size <= 1:
        return list(units)
    packs = []
    for i in range(0, len(units), size):
        part = units[i:i + size]
        if len(part) == 1:
            packs.append(part[0])
            continue
        calls: list[dict[str, Any]] = []
        for unit in part:
            last = calls[-1] if calls else None
            if (last is not None and last["entry"] == unit.entry and "shards" in unit.kwargs
                    and {**last["kwargs"], "shards": None} == {**unit.kwargs, "shards": None}):
                last["kwargs"]["shards"] = [*last["kwargs"]["shards"], *unit.kwargs["shards"]]
            else:
                calls.append({"entry": unit.entry, "kwargs": dict(unit.kwargs)})
        packs.append(Shard(f"{part[0].name}+{len(part) - 1}", f"{__name__}:run_packed", {"calls": calls}))
    return packs


def run_packed(calls: list[dict[str, Any]]) -> list[Any]:
    """What a pack of units (`group`) runs: each call's sbt_core `entry` with its `kwargs`, in order."""
    import importlib

    out = []
    for call in calls:
        module, _, function = call["entry"].partition(":")
        if module.partition(".")[0] != "sbt_core":
            raise ValueError(f"entry {call['entry']!r} is not an sbt_core function")
        out.append(getattr(importlib.import_module(module), function)(**call["kwargs"]))
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("-inf")


class LM:
    """A causal LM with its tokenizer and the domain whose text it writes: token ids in, token ids out.

    `engine` (`engines.VLLMEngine`), if given, samples in place of the HF model; `model` may then be a loader
    (called on first use of `lm.model`, e.g. by the HF-only decoders beam and reference), and the engine is
    closed before the HF model is loaded, so both never hold the device at once."""

    def __init__(self, model, tokenizer, domain: str | Domain = domains.DEFAULT, engine=None, model_config=None):
        self._model = model.eval() if isinstance(model, torch.nn.Module) else None
        self._load = None if self._model is not None else model
        self.engine = engine
        self._config = model_config
        self.tokenizer = tokenizer
        self.domain = domains.get(domain) if isinstance(domain, str) else domain
        self.prompt_form = prompt_form(tokenizer)  # what its SFT gave it: the question, or a trace's first line
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.backtrack_id = tokenizer.convert_tokens_to_ids(BACKTRACK)
        self.stop_ids = [self.eos_id, self.backtrack_id]
        # Tokens whose text holds a newline: where steps end, at the token level.
        self.newline_ids = {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
        self._drop = {self.eos_id, self.pad_id}
        self.sampled = self.cut = 0  # continuations sampled, and those stopped by max_new_tokens (not by a stop token)

    @property
    def model(self):
        """The HF model (loaded on first use when this LM samples through another engine, which is closed first)."""
        if self._model is None:
            self.close_engine()
            self._model = self._load().eval()
        return self._model

    @property
    def device(self) -> torch.device:
        """Where sampling keys and generators live: the HF model's device (CPU for another engine)."""
        return next(self._model.parameters()).device if self._model is not None else torch.device("cpu")

    @property
    def config(self):
        """The model's config (shape, context length), without loading HF weights for another engine."""
        return self._model.config if self._model is not None else self._config

    def close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def prompt(self, problem: dict) -> str:
        return self.domain.prompt(problem, self.prompt_form)

    def prompt_ids(self, problem: dict) -> list[int]:
        return self.encode(self.prompt(problem))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def text(self, ids: list[int]) -> str:
        """Response text; EOS and pad dropped, `<backtrack>` kept."""
        return self.tokenizer.decode([i for i in ids if i not in self._drop], skip_special_tokens=False)

    def sample(self, prompts, *, temperature, max_new_tokens, batch_rows, generator,
               batch_tokens: int | None = None) -> tuple[Sampled, list[tuple[int, int]] | None]:
        """Sample in chunks of at most `batch_rows` rows and, with `batch_tokens`, at most that many rows x positions
        (the longest prompt plus `max_new_tokens` a row: the KV cache's bound, which its doubling buffers hold at most
        twice). Each row's sampling key is drawn before chunking, so the chunks sample what one batch would. Also
        returns, per row, (its chunk, the model calls of that chunk). `watched` holds the log-prob of `<backtrack>`
        at every generated position (for `value`). Through another engine (vLLM: it batches and bounds memory
        itself) `watched`, `forward_passes` and the per-row calls are None: that engine does not report them."""
        if self.engine is not None:
            out = self.engine.sample(prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                                     stop_ids=self.stop_ids, generator=generator)
            self._count(out.tokens, max_new_tokens)
            return out, None
        tokens, logprobs, watched, passes, total = [], [], [], [], 0
        keys = row_keys(len(prompts), generator, self.device) if temperature > 0 else None
        rows = chunk_rows(prompts, max_new_tokens, batch_rows, batch_tokens)
        for chunk, s in enumerate(range(0, len(prompts), rows)):
            out = sample(
                self.model, prompts[s : s + rows], max_new_tokens=max_new_tokens, temperature=temperature,
                stop_ids=self.stop_ids, pad_id=self.pad_id, generator=generator, watch_id=self.backtrack_id,
                keys=None if keys is None else keys[s : s + rows],
            )
            tokens += out.tokens
            self._count(out.tokens, max_new_tokens)
            logprobs += out.logprobs
            watched += out.watched
            passes += [(chunk, out.forward_passes)] * len(out.tokens)
            total += out.forward_passes
        return Sampled(tokens, logprobs, total, watched), passes

    def _count(self, tokens: list[list[int]], max_new_tokens: int) -> None:
        self.sampled += len(tokens)
        self.cut += sum(1 for t in tokens if len(t) >= max_new_tokens and t[-1] not in self.stop_ids)

    def value(self, tokens: list[int], backtrack_logprobs: list[float] | None) -> float | None:
        """The model's own estimate that a response holds no wrong step: the log-probability that it emits no
        `<backtrack>` at any step boundary (the first position and each one after a newline), which is where
        D_back taught it to take a wrong step back. Sum over boundaries of log(1 - p(<backtrack>)). None where the
        engine did not report those log-probs."""
        if backtrack_logprobs is None:
            return None
        total = 0.0
        for i, lp in enumerate(backtrack_logprobs):
            if i == 0 or tokens[i - 1] in self.newline_ids:
                total += math.log1p(-min(math.exp(lp), 1.0 - 1e-12))
        return total


def chunk_rows(prompts: list[list[int]], max_new_tokens: int, batch_rows: int, batch_tokens: int | None) -> int:
    """Rows per sampling batch: `batch_rows`, fewer where `batch_tokens` (rows x positions) would be passed."""
    if batch_tokens is None or not prompts:
        return batch_rows
    return max(1, min(batch_rows, batch_tokens // (max(map(len, prompts)) + max_new_tokens)))


def make_generator(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
