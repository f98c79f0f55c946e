"""Self-backtracking search throughput: our batched search vs the paper's decoder, one run.

Both run the same model with the same N and b. Ours decodes many problems x N samples
together with a KV cache; the reference (`decoder="reference"`) runs one problem at a time
with HF beam-sample, as the paper's eval does. Prints problems/s, generated tokens/s and
strict accuracy for each, then `ratio: X` (ours over the reference, problems/s).

No trained model is needed (a randomly initialised 1m model is the default); pass --model
to compare accuracy on a trained one.

    python benchmarks/search_throughput.py [--model runs/sft/model] [--problems 256] [--reference-problems 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from sbt_core import domains, io
from sbt_core.config import SearchConfig
from sbt_core.models import create_tiny, load
from sbt_core.search.common import LM
from sbt_core.search.run import search


def measure(lm: LM, problems, cfg: SearchConfig) -> dict:
    t0 = time.perf_counter()
    results = search(lm, problems, cfg)
    seconds = time.perf_counter() - t0
    tokens = sum(r.generated_tokens for r in results)
    correct = sum(lm.domain.verify(p, r.output).correct for p, r in zip(problems, results))
    return {"problems": len(problems), "seconds": seconds, "problems_per_s": len(problems) / seconds,
            "tokens_per_s": tokens / seconds, "accuracy_strict": correct / len(problems)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="trained model folder (default: a random 1m model)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--problems", type=int, default=128, help="problems for our batched search")
    ap.add_argument("--reference-problems", type=int, default=8, help="problems for the one-at-a-time reference")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-rows", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(create_tiny("1m", f"{tmp}/model", seed=0))
        lm = LM(*load(path, device=args.device))
        countdown = domains.get("countdown")
        cfg = countdown.GenerateConfig(num_train=1, num_val_seen=0, num_val_new=args.problems, workers=1)
        countdown.generate(cfg, f"{tmp}/data")
        problems = io.read_parquet(f"{tmp}/data/val_new.parquet").select(["nums", "target"]).to_pylist()
        common = dict(n=args.n, backtrack_budget=args.b, max_new_tokens=args.max_new_tokens, batch_rows=args.batch_rows)
        ours = measure(lm, problems, SearchConfig(decoder="self_backtrack", **common))
        ref = measure(lm, problems[: args.reference_problems], SearchConfig(decoder="reference", **common))
        # Our accuracy on the same problems the reference saw, for a like-for-like check.
        ours_same = measure(lm, problems[: args.reference_problems], SearchConfig(decoder="self_backtrack", **common))
    print(f"model: {'random 1m' if not args.model else args.model}  N={args.n} b={args.b}  device={args.device} threads={torch.get_num_threads()}")
    for name, m in (("ours (batched)", ours), ("reference (one at a time)", ref)):
        print(f"{name:27s} problems={m['problems']:4d}  {m['seconds']:7.2f} s  {m['problems_per_s']:8.2f} problems/s  "
              f"{m['tokens_per_s']:10.0f} tokens/s  accuracy(strict)={m['accuracy_strict']:.3f}")
    print(f"accuracy on the reference's {args.reference_problems} problems: ours {ours_same['accuracy_strict']:.3f}, "
          f"reference {ref['accuracy_strict']:.3f}")
    print(f"tokens/s ratio: {ours['tokens_per_s'] / ref['tokens_per_s']:.1f}")
    print(f"ratio: {ours['problems_per_s'] / ref['problems_per_s']:.1f}")


if __name__ == "__main__":
    main()
