#!/usr/bin/env bash
# The benchmark harness (see benchmarks/run.py): sets up .venv, then measures ckpt against the baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python benchmarks/run.py "$@"
