"""Decode efficiency: the batched sampler's FLOP/s as a share of this machine's fp32 matmul peak.

Both are measured in this run: the peak as a large fp32 matrix product (`--matmul` square), the
sampler as tokens/s of `search.sampling.sample` over `--rows` prompts of a tiny model, converted to
FLOP/s with the second paper's decode formula (`metrics.decode_flops`, which counts multiply-adds and
leaves out the embedding and output head; x2 for FLOPs, as the matmul's 2 n^3) and, beside it, with
the output head counted (2 * hidden * vocab FLOPs per token). Prints the figures and `ratio: X` (decode FLOP/s over the matmul peak).

    python benchmarks/decode_flops.py [--size 1m] [--rows 2048] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from sbt_core import metrics
from sbt_core.models import build_tiny, build_tokenizer
from sbt_core.search.sampling import sample


def matmul_peak(n: int, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1m")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--matmul", type=int, default=2048)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_tiny(args.size, tok).eval()
    prompt = tok("###Question: numbers [12, 7, 3]->target 24\n###Response:\n")["input_ids"]
    # No stop token: every row decodes the full length, so the token count is exact.
    with torch.no_grad():
        sample(model, [prompt] * 8, max_new_tokens=4, temperature=0.7, stop_ids=[], pad_id=tok.pad_token_id)
        t0 = time.perf_counter()
        out = sample(model, [prompt] * args.rows, max_new_tokens=args.new_tokens, temperature=0.7, stop_ids=[],
                     pad_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
    tokens = sum(len(t) for t in out.tokens)
    shape = metrics.Shape.of(model.config)
    # The formula over the generated tokens, with the prompt's positions attended to as well.
    flops = 2 * sum(metrics.decode_flops(shape, len(prompt) + len(t)) - metrics.decode_flops(shape, len(prompt))
                    for t in out.tokens)
    head = 2 * shape.hidden * model.config.vocab_size * tokens
    peak = matmul_peak(args.matmul)
    print(f"matmul peak (fp32, {args.matmul}^2, {torch.get_num_threads()} threads): {peak / 1e9:8.1f} GFLOP/s")
    print(f"decode ({args.size}, {args.rows} rows x {args.new_tokens} tokens): {tokens / seconds:10.0f} tokens/s, "
          f"{flops / seconds / 1e9:6.2f} GFLOP/s by the formula, {(flops + head) / seconds / 1e9:6.2f} with the "
          f"output head")
    print(f"share of peak: {flops / seconds / peak:.1%} (formula), {(flops + head) / seconds / peak:.1%} (with head)")
    print(f"ratio: {flops / seconds / peak:.3f}")


if __name__ == "__main__":
    main()
