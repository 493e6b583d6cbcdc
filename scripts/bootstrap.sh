#!/usr/bin/env bash
# Create .venv (if needed) with torch==2.13.0 (the local CPU build) and ckpt installed editable with test
# extras. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CKPT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# Install torch first, pinned: any looser requirement would make pip fetch a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "torch==2.13.0"
fi
stamp="$VENV/.ckpt-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/pip" install --quiet -e ".[test]"
    touch "$stamp"
fi
