#!/usr/bin/env bash
# The test command: sets up .venv (scripts/bootstrap.sh) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
