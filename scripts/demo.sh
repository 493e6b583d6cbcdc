#!/usr/bin/env bash
# The main demo: sets up .venv, trains, is preempted, resumes, stops early, then looks at the store with the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python examples/demo.py "$@"
