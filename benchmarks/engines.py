"""Sampling engines: the same search stage (`search.run.run`) through `engine: hf` and `engine: vllm`, one run.

Both search the same problems with the same model, N and b (default the paper's self-backtracking b=1, N=32),
each into its own folder, on whatever device this machine has (vLLM's CPU build here, the official package on a
GPU). Prints per engine the model load time, problems/s and generated tokens/s of the stage (load excluded),
strict accuracy, then `ratio: X` (vLLM over HF, problems/s). On CPU it mostly proves the engine runs; the GPU
figure is `benchmarks/gpu_check.sh`'s.

Needs vllm: run it in the vLLM venv (`bash scripts/setup-vllm.sh`, then `.venv-vllm/bin/python
benchmarks/engines.py`) or on a GPU worker with `sbt[vllm]`. No trained model is needed (a randomly initialised
model of `--size` is the default: it decodes to `--max-new-tokens` on every row); pass --model for a trained one.

    python benchmarks/engines.py [--model runs/tiny/sft-bt/model --data runs/tiny/data/val_new.parquet] [--size 1m]
        [--problems 256] [--n 32] [--b 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(engine: str, path: str, data: str, out: str, args) -> dict:
    import torch

    from sbt_core import io
    from sbt_core.config import SearchConfig
    from sbt_core.search import run as search_stage

    cfg = SearchConfig(decoder="self_backtrack", n=args.n, backtrack_budget=args.b, max_new_tokens=args.max_new_tokens,
                       batch_rows=args.batch_rows, shard_size=args.problems, engine=engine, dtype=args.dtype,
                       gpu_memory_utilization=args.gpu_memory_utilization)
    t0 = time.perf_counter()
    loader = search_stage.lazy_lm(path, "countdown", inference=cfg.inference())
    loader()
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    uri = search_stage.run(cfg, path, data, out, lm=loader)["results"]
    seconds = time.perf_counter() - t0
    loader.release()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rows = io.read_parquet(uri).select(["correct_strict", "generated_tokens"]).to_pylist()
    return {"load_s": loaded, "seconds": seconds, "problems": len(rows), "problems_per_s": len(rows) / seconds,
            "tokens_per_s": sum(r["generated_tokens"] for r in rows) / seconds,
            "accuracy_strict": sum(r["correct_strict"] for r in rows) / len(rows)}


def main() -> None:
    import torch

    from sbt_core import domains, io
    from sbt_core.models import create_tiny

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="trained model folder (default: a random model of --size)")
    ap.add_argument("--size", default="1m", help="size of the random model (sbt_core.models.SIZES)")
    ap.add_argument("--data", help="problems parquet (a run's data/val_new.parquet; default: --problems generated "
                    "with the generator's defaults, 4 numbers)")
    ap.add_argument("--problems", type=int, default=256)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-rows", type=int, default=2048, help="the HF engine's rows per batch")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(create_tiny(args.size, f"{tmp}/model", seed=0))
        data = f"{tmp}/val_new.parquet"
        if args.data:
            io.write_parquet(io.read_parquet(args.data).slice(0, args.problems), data)
        else:
            countdown = domains.get("countdown")
            countdown.generate(countdown.GenerateConfig(num_train=1, num_val_seen=0, num_val_new=args.problems,
                                                        workers=1), f"{tmp}/data")
            data = f"{tmp}/data/val_new.parquet"
        args.problems = len(io.read_parquet(data))
        found = {engine: measure(engine, path, data, f"{tmp}/{engine}", args) for engine in ("hf", "vllm")}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"model: {args.model or 'random ' + args.size}  self-backtracking b={args.b} N={args.n}  "
          f"max_new_tokens={args.max_new_tokens}  device: {device}  dtype: {args.dtype}")
    for engine, m in found.items():
        print(f"{engine:5s} load {m['load_s']:6.1f} s  problems={m['problems']:5d}  {m['seconds']:8.2f} s  "
              f"{m['problems_per_s']:8.2f} problems/s  {m['tokens_per_s']:10.0f} tokens/s  "
              f"accuracy(strict)={m['accuracy_strict']:.3f}")
    print(f"tokens/s ratio: {found['vllm']['tokens_per_s'] / found['hf']['tokens_per_s']:.2f}")
    print(f"ratio: {found['vllm']['problems_per_s'] / found['hf']['problems_per_s']:.2f}")


if __name__ == "__main__":
    main()
