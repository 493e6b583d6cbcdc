#!/usr/bin/env bash
# The main demo: sets up .venv (the package only, no test extra), trains, is preempted, resumes, stops
# early, then looks at the store with the CLI. Arguments go to examples/demo.py (an optional new folder).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
exec "${CKPT_VENV:-.venv}/bin/python" examples/demo.py "$@"
