#!/usr/bin/env bash
# The GPU check of the scale-out work (<= 8 minutes on one GPU), run on a GPU machine from the repository root:
#
#   bash benchmarks/gpu_check.sh            # every figure on stdout, the files under $OUT (default: a temp folder)
#
# 1. fan-out: benchmarks/fanout.py with one process worker per visible GPU (CUDA_VISIBLE_DEVICES=i each), an
#    evaluation's shards as flow runs of a real `prefect server`, against the same fan-out over one worker;
# 2. a bf16 SFT of the 17m model for 200 steps on D_op u D_back (the paper's 4-number Countdown): steps/s,
#    tokens/s, train FLOPs and the loss, with the world size the trainer saw (1: no implicit DataParallel);
# 3. GRPO (TRL) for 5 steps from that model, on one GPU: seconds, rollouts, first and last reward;
# 4. the sampling engines: benchmarks/engines.py, self-backtracking b=1 N=32 on 1,000 problems through engine hf
#    and engine vllm, for a 17m and a 1B-shaped (Llama-3.2-1B) random model, bf16 (the goal: vllm >= 5x hf).
#    vLLM goes in a venv of its own (.venv-vllm-gpu, `pip install vllm`: its torch pin may differ from ours);
#    SBT_GPU_CHECK_ENGINES=0 leaves it out.
#
# SBT_GPU_CHECK_CPU=1 runs the same steps on a CPU at a size it finishes in a few minutes (the 1m model, fewer
# steps): what the CPU machine checks the script with; its figures say nothing about a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-$(mktemp -d -t sbt-gpu-check-XXXX)}
mkdir -p "$OUT"

if [ "${SBT_GPU_CHECK_CPU:-0}" = 1 ]; then
  GPUS=2; SIZE=1m; SFT_STEPS=20; BATCH=32; BF16=false; GRPO_PROMPTS=4; TRAIN=2000; THREADS=1; SHARD=16
else
  python - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no GPU (SBT_GPU_CHECK_CPU=1 runs the CPU version)")
EOF
  GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
  SIZE=17m; SFT_STEPS=200; BATCH=256; BF16=true; GRPO_PROMPTS=64; TRAIN=20000; THREADS=4; SHARD=128
fi
python - <<EOF
import torch
print("gpu_check: torch", torch.__version__, "| GPUs:", torch.cuda.device_count(),
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "| out: $OUT")
EOF
START=$(date +%s)

echo "== 1. fan-out: one worker per GPU ($GPUS) against one worker"
python benchmarks/fanout.py --workers "$GPUS" --threads "$THREADS" --shards $((4 * GPUS)) --shard-size "$SHARD" \
  --shards-per-run 2 --max-new-tokens 64 > "$OUT/fanout.txt" 2>&1 || { tail -40 "$OUT/fanout.txt"; exit 1; }
sed -n '/^machine:/,/^(at /p' "$OUT/fanout.txt"

echo "== 2. SFT: $SIZE model, bf16=$BF16, $SFT_STEPS steps"
sbt generate --out "$OUT/data" --num-numbers 4 --number-max 99 --num-train "$TRAIN" --num-val-seen 100 \
  --num-val-new 100 --seed 0 > "$OUT/data.log" 2>&1 || { tail -40 "$OUT/data.log"; exit 1; }
sbt build-data --data "$OUT/data/train.parquet" --out "$OUT/bt" --recipe self_backtrack >> "$OUT/data.log" 2>&1 ||
  { tail -40 "$OUT/data.log"; exit 1; }
sbt train --data "$OUT/bt/sft.parquet" --out "$OUT/sft" --size "$SIZE" --max-steps "$SFT_STEPS" \
  --batch-size "$BATCH" --lr 1e-3 --warmup-steps 20 --save-steps 100000 --logging-steps 10 \
  --set "bf16=$BF16" > "$OUT/sft.log" 2>&1 || { tail -40 "$OUT/sft.log"; exit 1; }
python - "$OUT/sft/train_metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"sft: {m['train/steps']} steps in {m['train/seconds']:.1f} s ({m['train/steps'] / m['train/seconds']:.2f} steps/s), "
      f"{m['train/tokens_per_second']:.0f} tokens/s, {m['train/flops']:.3g} FLOPs, {m['train/parameters']:,} parameters, "
      f"world size {m['train/world_size']}, loss {m['train/mean_loss']:.3f} mean / {m['train/final_loss']:.3f} last")
EOF

echo "== 3. GRPO: 5 steps from the SFT model"
sbt grpo --model "$OUT/sft/model" --data "$OUT/data/train.parquet" --out "$OUT/grpo" --steps 5 \
  --prompts-per-step "$GRPO_PROMPTS" --rollouts 8 --learning-rate 1e-6 --save-steps 100000 \
  --set "bf16=$BF16" > "$OUT/grpo.log" 2>&1 || { tail -40 "$OUT/grpo.log"; exit 1; }
python - "$OUT/grpo/grpo_metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"grpo: {m['train/steps']} steps in {m['train/seconds']:.1f} s, {m['grpo/rollouts']} rollouts, "
      f"{m['train/tokens_per_second'] or 0:.0f} tokens/s, reward {m['grpo/first_reward']:.3f} first / "
      f"{m['grpo/last_reward']:.3f} last")
EOF
if [ "${SBT_GPU_CHECK_ENGINES:-1}" = 1 ]; then
  echo "== 4. engines: self-backtracking b=1 N=32, hf vs vllm"
  if [ "${SBT_GPU_CHECK_CPU:-0}" = 1 ]; then
    bash scripts/setup-vllm.sh; VPY=.venv-vllm/bin/python; ENGINE_SIZES="1m"; ENGINE_PROBLEMS=64; DT=float32
  else
    if ! .venv-vllm-gpu/bin/python -c "import vllm, sbt_core" 2>/dev/null; then
      python -m venv .venv-vllm-gpu && .venv-vllm-gpu/bin/pip install -q vllm && .venv-vllm-gpu/bin/pip install -q -e . \
        > "$OUT/vllm-install.log" 2>&1 || { tail -40 "$OUT/vllm-install.log"; exit 1; }
    fi
    VPY=.venv-vllm-gpu/bin/python; ENGINE_SIZES="17m 1b"; ENGINE_PROBLEMS=1000; DT=bfloat16
  fi
  for size in $ENGINE_SIZES; do
    $VPY benchmarks/engines.py --size "$size" --problems "$ENGINE_PROBLEMS" --dtype "$DT" > "$OUT/engines-$size.txt" 2>&1 ||
      { tail -40 "$OUT/engines-$size.txt"; exit 1; }
    grep -E "^(model|hf |vllm|tokens/s ratio|ratio)" "$OUT/engines-$size.txt"
  done
fi
echo "gpu_check: done in $(( $(date +%s) - START )) s; files in $OUT"
