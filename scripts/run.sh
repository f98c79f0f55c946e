#!/usr/bin/env bash
# Set up (if needed) and run the whole pipeline: `bash scripts/run.sh [--config tiny] [--run-dir DIR] [--set k=v]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime
. .venv/bin/activate
sbt run "$@"
