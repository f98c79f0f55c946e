"""Decode efficiency: the batched sampler's FLOP/s as a share of this machine's fp32 matmul peak.

All measured in this run: the peak as a large fp32 matrix product (`--matmul` square); the sampler
(`search.sampling.sample`, its KV cache grown in place) as tokens/s over two workloads, converted to
FLOP/s with the second paper's decode formula (`metrics.decode_flops`, which counts multiply-adds and
leaves out the embedding and output head; x2 for FLOPs, as the matmul's 2 n^3) and, beside it, with
the output head counted (2 * hidden * vocab FLOPs per token):

- wide: `--rows` prompts x `--new-tokens` tokens (a direct model's n samples);
- long: `--long-rows` prompts x `--long-tokens` tokens (a trace model's one decode per problem).

The baseline is the same sampler with transformers' `DynamicCache`, which concatenates (copies the
whole cache) at every token. Prints the figures and `ratio: X` (the long decode's speed-up over the
baseline); `share of peak` is the decode FLOP/s over the matmul peak.

    python benchmarks/decode_flops.py [--size 1m] [--rows 2048] [--new-tokens 64] [--long-rows 100] [--long-tokens 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

from sbt_core import metrics
from sbt_core.models import build_tiny, build_tokenizer
from sbt_core.search import sampling


def matmul_peak(n: int, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0)


def _concatenating_select(cache, keep) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[keep], layer.values[keep]


def decode(model, prompt, rows: int, new_tokens: int, pad_id: int, baseline: bool = False) -> tuple[float, list]:
    """Seconds and generated tokens of one batched decode; no stop token, so every row runs the full length."""
    saved = sampling._Cache, sampling._select_cache
    if baseline:
        sampling._Cache, sampling._select_cache = DynamicCache, _concatenating_select
    try:
        t0 = time.perf_counter()
        out = sampling.sample(model, [prompt] * rows, max_new_tokens=new_tokens, temperature=0.7, stop_ids=[],
                              pad_id=pad_id, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t0, out.tokens
    finally:
        sampling._Cache, sampling._select_cache = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1m")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--long-rows", type=int, default=100)
    ap.add_argument("--long-tokens", type=int, default=1024)
    ap.add_argument("--matmul", type=int, default=2048)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = build_tokenizer("countdown-trace")
    model = build_tiny(args.size, tok, max_positions=4096).eval()
    prompt = tok("###Question: numbers [12, 7, 3]->target 24\n###Response:\n")["input_ids"]
    shape = metrics.Shape.of(model.config)
    peak = matmul_peak(args.matmul)
    print(f"matmul peak (fp32, {args.matmul}^2, {torch.get_num_threads()} threads): {peak / 1e9:8.1f} GFLOP/s")
    decode(model, prompt, 8, 4, tok.pad_token_id)  # warm up
    speed = {}
    for name, rows, n in (("wide", args.rows, args.new_tokens), ("long", args.long_rows, args.long_tokens)):
        for baseline in (False, True):
            seconds, tokens = decode(model, prompt, rows, n, tok.pad_token_id, baseline)
            count = sum(len(t) for t in tokens)
            # The formula over the generated tokens, with the prompt's positions attended to as well.
            flops = 2 * sum(metrics.decode_flops(shape, len(prompt) + len(t)) - metrics.decode_flops(shape, len(prompt))
                            for t in tokens)
            head = 2 * shape.hidden * model.config.vocab_size * count
            speed[name, baseline] = count / seconds
            label = "concatenating cache (baseline)" if baseline else "cache grown in place"
            print(f"{name} decode ({args.size}, {rows} rows x {n} tokens, {label}): {count / seconds:9.0f} tokens/s, "
                  f"{flops / seconds / 1e9:6.2f} GFLOP/s by the formula ({flops / seconds / peak:.1%} of peak), "
                  f"{(flops + head) / seconds / 1e9:6.2f} with the output head ({(flops + head) / seconds / peak:.1%})")
    print(f"wide speed-up over the baseline: {speed['wide', False] / speed['wide', True]:.2f}x")
    print(f"ratio: {speed['long', False] / speed['long', True]:.2f}")


if __name__ == "__main__":
    main()
