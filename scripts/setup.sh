#!/usr/bin/env bash
# Create .venv (if missing) and install sbt with its test extras (`--runtime`: without them, what
# scripts/run.sh needs; 60 s instead of 102 s in a fresh clone). torch goes first, pinned,
# so pip takes the CPU wheel instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
extras="[test]"
[ "${1:-}" = "--runtime" ] && extras=""
python -m pip install -q -e ".$extras"
