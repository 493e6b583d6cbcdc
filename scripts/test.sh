#!/usr/bin/env bash
# The test command: sets up .venv with the test extra (scripts/bootstrap.sh test) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
exec "${CKPT_VENV:-.venv}/bin/python" -m pytest "$@"
