#!/usr/bin/env bash
# Create .venv (or $CKPT_VENV) if needed and install ckpt into it, editable. Idempotent and quick when
# everything is already there.
#
#   bash scripts/bootstrap.sh demo   the package and its runtime dependencies only (what the demo needs)
#   bash scripts/bootstrap.sh test   the same plus the test extra (pytest, lightning, transformers, moto,
#                                    playwright...) and, for the browser tests of `ckpt ui`, Debian's
#                                    `chromium` when /usr/bin/chromium is missing and this runs as root with
#                                    apt-get (CKPT_INSTALL_CHROMIUM=0 skips that; without it those tests skip,
#                                    saying why). The default mode, so older callers keep working.
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
# The browser tests (tests/test_ui.py) drive Debian's chromium through Playwright (Playwright's own browser
# download is not used). Installed when missing; a failure is reported, never fatal: they then skip.
if [ "$MODE" = test ] && [ "${CKPT_INSTALL_CHROMIUM:-1}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing Debian's chromium for the browser tests of ckpt ui (apt-get)" >&2
        apt_log="$VENV/.chromium-apt.log"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
                >"$apt_log" 2>&1; then
            echo "bootstrap: could not install chromium (see $apt_log); tests/test_ui.py's browser tests will" \
                 "skip" >&2
            tail -n 5 "$apt_log" >&2 || true
        fi
    else
        echo "bootstrap: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get);" \
             "tests/test_ui.py's browser tests will skip (apt-get install chromium)" >&2
    fi
fi
