"""Figures that put different models' evaluations on one axis: pass@k, decode FLOPs, token budgets.

- `pass_at_k(n, c, k)`: the unbiased estimator of the probability that at least one of k samples is
  right, from n >= k samples of which c are right: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021,
  arXiv 2107.03374), computed as a product so that large n does not overflow. It is not "any of the
  first k samples", which has a higher variance and depends on the samples' order.
- `decode_flops(...)`: the FLOPs arXiv 2504.07052 matches compute with, per problem,

      n_layer * [(2 h^2 + 2 h kv + 3 h ffn) * L + h * L (L + 1) / 2] * n

  with h the hidden size, kv the key/value width (KV heads x head size), ffn the MLP width, L the
  generated length and n the number of samples: per token and layer, the query and output
  projections (2 h^2), the key and value projections (2 h kv) and the gated MLP's three matrices
  (3 h ffn), plus attention over the L(L+1)/2 earlier positions. Like the paper's, it counts one
  multiply-add as one FLOP and leaves out the embedding and the output head.
- `within_budget(tokens, budget)`: a single long generation judged at a smaller token budget, as the
  paper reads a backtracking model's one 4,096-token decode at 256, 512, 1k and 2k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (needs 0 <= c <= n and 1 <= k <= n)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def paired_change(before: list[float], after: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean per-problem change (after - before) on the same problems, with its 95% normal interval."""
    if len(before) != len(after) or not before:
        raise ValueError("paired_change needs two equally long, non-empty lists")
    diffs = [a - b for a, b in zip(after, before)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)
    half = z * (var / len(diffs)) ** 0.5
    return mean, mean - half, mean + half


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n (k may be fractional: an expected count)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # rounding never leaves p outside


# Student's t, 97.5% quantile, by degrees of freedom (1..10); beyond, a close approximation.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def mean_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean of a few runs (seeds) with its 95% t-interval; one run: (x, x, x)."""
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    n = len(xs)
    m = sum(xs) / n
    if n == 1:
        return m, m, m
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96 + 2.5 / (n - 1)
    return m, m - t * sd / math.sqrt(n), m + t * sd / math.sqrt(n)


@dataclass(frozen=True)
class Shape:
    """What decode FLOPs depend on: layers, hidden size, key/value width, MLP width."""

    n_layer: int
    hidden: int
    kv: int
    ffn: int

    @classmethod
    def of(cls, config) -> Shape:
        """From a Hugging Face causal-LM config (Llama, Qwen2 and kin)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.num_hidden_layers, config.hidden_size, kv_heads * head_dim, config.intermediate_size)


def decode_flops(shape: Shape, length: int, samples: int = 1) -> float:
    """FLOPs of generating `length` tokens, `samples` times (the formula in the module docstring)."""
    h, L = shape.hidden, length
    per_layer = (2 * h * h + 2 * h * shape.kv + 3 * h * shape.ffn) * L + h * L * (L + 1) / 2
    return float(shape.n_layer * per_layer * samples)


def within_budget(tokens: list[int], budget: int) -> list[int]:
    """The part of a generation a token budget allows: its first `budget` tokens."""
    if budget < 0:
        raise ValueError(f"a token budget is >= 0, got {budget}")
    return tokens[:budget]
