#!/usr/bin/env bash
# Create .venv (or $CKPT_VENV) if needed and install ckpt into it, editable. Idempotent and quick when
# everything is already there.
#
#   bash scripts/bootstrap.sh demo   the package and its runtime dependencies only (what the demo needs)
#   bash scripts/bootstrap.sh test   the same plus the test extra (pytest, lightning, transformers, moto...)
#                                    (the default, so older callers keep working)
#
# torch: a torch already in the venv is kept when it is within pyproject's range (torch>=TORCH_MIN), so a
# venv made with a CPU-only or a CUDA build of your choice stays as it is. When torch is missing (or too
# old) torch==2.13.0, the version this project is tested with, is installed FIRST and pinned: left to
# resolve the range itself, pip could pull a different (multi-GB CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
case "$MODE" in
    demo) spec="." ;;
    test) spec=".[test]" ;;
    *) echo "usage: bash scripts/bootstrap.sh [demo|test]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
VENV=${CKPT_VENV:-.venv}
TORCH_PIN=2.13.0
TORCH_MIN=2.9  # keep in step with "torch>=..." in pyproject.toml (tests/test_setup_scripts.py checks)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "$TORCH_MIN" <<'PYCODE' 2>/dev/null
import sys
import torch
have = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(have < tuple(int(p) for p in sys.argv[1].split(".")))
PYCODE
then
    "$VENV/bin/pip" install --quiet "torch==$TORCH_PIN"
fi
# One stamp per mode: `demo` first and `test` later adds the test extra to the same venv.
stamp="$VENV/.ckpt-installed-$MODE"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/pip" install --quiet -e "$spec"
    touch "$stamp"
    if [ "$MODE" = test ]; then
        touch "$VENV/.ckpt-installed-demo"  # the test install holds everything the demo needs
    fi
fi
