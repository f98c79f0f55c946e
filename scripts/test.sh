#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest (then only the main venv's run).
# Without arguments, also the vLLM engine's parity tests in their own venv (scripts/setup-vllm.sh, marker vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  bash scripts/setup-vllm.sh
  .venv-vllm/bin/python -m pytest -q -m vllm tests/test_engines.py
fi
