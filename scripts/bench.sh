#!/usr/bin/env bash
# The benchmark harness (benchmarks/README.md, benchmarks/run.py): sets up .venv, then measures ckpt against
# the baselines in the same run. Options pass through: --only CASE[,CASE|GROUP], --quick, --reps N,
# --name STEM, --note TEXT, --pause S. The GPU cases run through scripts/gpu-check.sh on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python benchmarks/run.py "$@"
