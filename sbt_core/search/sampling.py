"""Batched autoregressive sampling with a KV cache: one Python step per token, not per row.

Prompts of different lengths are left-padded; position ids follow the attention mask so a
padded row sees exactly what it would see alone. Rows stop at a stop token (EOS,
`<backtrack>`) or the token limit; rows that stop early are dropped from the batch (and
from the cache) so the remaining rows run on a smaller batch.

Sampling is counter-based: each row carries a key (drawn from the generator before any batching,
`row_keys`), and its token at step t is drawn by inverse CDF from the uniform hash(key, t) (splitmix64).
That is exact categorical sampling, and a row's draws do not depend on which rows share its batch: a
request split into bounded chunks (`LM.sample`'s `batch_tokens`) samples what it samples whole, up to
the last bits of the model's arithmetic at another batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


@dataclass
class Sampled:
    """Per row: generated token ids (stop token included) and their log-probabilities; with a `watch_id`,
    also the log-probability the model gave that token at each generated position."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    forward_passes: int  # model calls made for this batch
    watched: list[list[float]] | None = None


_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # splitmix64's constants as signed int64 (torch has no uint64 arithmetic)
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors (multiplication wraps around, as in uint64)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in [0, 1) per row (float64, 53 bits): a hash of the row's key and the step."""
    return _shr(splitmix64(splitmix64(keys) ^ step), 11).double() * 2.0**-53


def row_keys(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n sampling keys, one per row, drawn from `generator`."""
    return torch.randint(0, 2**62, (n,), generator=generator, device=device, dtype=torch.long)


def draw(probs: torch.Tensor, keys: torch.Tensor, step: int) -> torch.Tensor:
    """A token per row from `probs` (rows x vocab) by inverse CDF at `uniforms(keys, step)`."""
    cdf = probs.double().cumsum(-1)
    u = uniforms(keys, step) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


class _GrowingLayer(DynamicLayer):
    """A KV-cache layer whose keys and values live in buffers grown by doubling: a decoded token is
    written in place. (`DynamicLayer` concatenates, copying the whole cache at every token, which
    made a 2,048-token decode quadratic in memory traffic: 561 tokens/s for 100 rows of the 1m model.)
    `keys` / `values` are views of the filled part."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._n = 0

    def _grow(self, buf: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        new = like.new_empty((*like.shape[:-2], capacity, like.shape[-1]))
        if buf is not None:
            new[..., : self._n, :] = buf[..., : self._n, :]
        return new

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self._n, key_states.shape[-2]
        if self._k is None or n + add > self._k.shape[-2]:
            capacity = max(2 * (0 if self._k is None else self._k.shape[-2]), n + add, 64)
            self._k, self._v = self._grow(self._k, key_states, capacity), self._grow(self._v, value_states, capacity)
        self._k[..., n : n + add, :] = key_states
        self._v[..., n : n + add, :] = value_states
        self._n = n + add
        self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]
        return self.keys, self.values

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows in `keep` (rows that finished leave the batch)."""
        self._k, self._v = self._k[keep], self._v[keep]
        self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]


class _Cache(DynamicCache):
    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=_GrowingLayer)


def _select_cache(cache: _Cache, keep: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.select(keep)


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    stop_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    compact_below: float = 0.5,
    watch_id: int | None = None,
    keys: torch.Tensor | None = None,
) -> Sampled:
    """Continue every prompt; temperature 0 is greedy. Log-probs are the model's own
    (untempered) log-softmax, the quantity the search ranks by. `watch_id` (e.g. `<backtrack>`):
    also record its log-prob at every position (free: the log-softmax is computed anyway).
    `keys`: the rows' sampling keys (`row_keys`); None draws them from `generator`."""
    device = next(model.parameters()).device
    if temperature > 0 and keys is None:
        keys = row_keys(len(prompts), generator, device)
    ids, mask = left_pad(prompts, pad_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    n = len(prompts)
    stops = torch.tensor(stop_ids, device=device)
    cache = _Cache()
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
    ).logits[:, -1]
    passes = 1
    rows = torch.arange(n, device=device)  # original row of each live batch row
    next_pos = pos[:, -1] + 1
    out_tokens = torch.full((n, max_new_tokens), -1, dtype=torch.long, device=device)
    out_logp = torch.zeros((n, max_new_tokens), device=device)
    out_watch = torch.zeros((n, max_new_tokens), device=device) if watch_id is not None else None
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = draw(torch.softmax(logits.float() / temperature, dim=-1), keys, step)
        nxt = torch.where(finished, pad_id, nxt)
        log_softmax = torch.log_softmax(logits.float(), dim=-1)
        logp = log_softmax.gather(-1, nxt[:, None]).squeeze(-1)
        live = ~finished
        out_tokens[rows[live], step] = nxt[live]
        out_logp[rows[live], step] = logp[live]
        if out_watch is not None:
            out_watch[rows[live], step] = log_softmax[live, watch_id]
        finished = finished | torch.isin(nxt, stops)
        if step == max_new_tokens - 1 or finished.all():
            break
        if (~finished).float().mean() < compact_below:  # drop finished rows from batch and cache
            keep = ~finished
            _select_cache(cache, keep)
            rows, nxt, mask, next_pos, finished = rows[keep], nxt[keep], mask[keep], next_pos[keep], finished[keep]
            keys = keys[keep] if keys is not None else None
        mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
        logits = model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        ).logits[:, -1]
        passes += 1
        next_pos = next_pos + 1
    tokens, logps, watched = [], [], []
    stop_set = set(stop_ids)
    for r, row in enumerate(out_tokens.tolist()):
        k = next((i for i, x in enumerate(row) if x == -1), len(row))
        k = next((i + 1 for i, x in enumerate(row[:k]) if x in stop_set), k)
        tokens.append(row[:k])
        logps.append(out_logp[r, :k].tolist())
        if out_watch is not None:
            watched.append(out_watch[r, :k].tolist())
    return Sampled(tokens, logps, passes, watched if out_watch is not None else None)
