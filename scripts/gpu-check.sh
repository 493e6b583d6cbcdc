#!/usr/bin/env bash
# The GPU check: on a machine with CUDA, run the CUDA tests (pytest -m gpu) and the benchmark's GPU cases
# (gpu_fp32: a 1 GiB state on the GPU; gpu_gpt2: GPT-2 small + AdamW on the GPU; save from CUDA, async save
# blocking from CUDA, load_into CUDA tensors, each against torch.save/torch.load and the copy floors) in
# under ten minutes. Results: benchmarks/results/gpu-latest.{json,md}, and logs; when $OUT is set (the
# device machine's folder of files sent back) they are copied there too. Without CUDA: says so, exits 0.
#
#   bash scripts/gpu-check.sh --fetch-wheels   # HERE, beforehand (needs pip and the network): wheels of
#                                              # ckpt's dependencies that the GPU image lacks, for Python
#                                              # ${GPU_PY_VERSION:-3.12}, into scripts/.gpu-wheels (git-ignored)
#   bash scripts/gpu-check.sh                  # THERE: device run with carry=["scripts/.gpu-wheels"],
#                                              # timeout_s=600; copy the figures into the README
#
# GPU_CHECK_ON_CPU=1 bash scripts/gpu-check.sh rehearses the whole script on a machine without CUDA (the
# GPU cases on the CPU, --quick, results as gpu-rehearsal.*), so that device time is not spent on a typo.
#
# Python: $PYTHON, else .venv/bin/python if it sees CUDA, else python3. ckpt and the carried wheels are
# installed with --no-deps into a private folder (PYTHONPATH), never into that Python's own packages.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=scripts/.gpu-wheels
# Import name -> distribution name, for what ckpt needs at run time (and mako, alembic's template engine).
NEEDED="sqlalchemy:SQLAlchemy alembic:alembic mako:Mako zstandard:zstandard blake3:blake3 xxhash:xxhash
safetensors:safetensors fsspec:fsspec click:click rich:rich tqdm:tqdm numpy:numpy"

if [ "${1:-}" = "--fetch-wheels" ]; then
    PIP=${PIP:-.venv/bin/pip}
    PYV=${GPU_PY_VERSION:-3.12}
    mkdir -p "$WHEELS"
    echo '*' > "$WHEELS/.gitignore"
    # The same versions as in this checkout's .venv; only what the GPU image is known to lack
    # (/work/.library/device/KINDS.md lists its packages).
    for dist in SQLAlchemy alembic Mako zstandard blake3; do
        ver=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$dist'))")
        "$PIP" download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d "$WHEELS" "$dist==$ver" || exit 1
    done
    ls -l "$WHEELS"
    exit 0
fi

started=$(date +%s)
ON_CPU=${GPU_CHECK_ON_CPU:-}
CHECK="import torch, sys; sys.exit(not torch.cuda.is_available())"
[ -n "$ON_CPU" ] && CHECK="import torch"
PY=""
candidates=${PYTHON:-}
[ -z "$candidates" ] && candidates=".venv/bin/python python3"
for c in $candidates; do
    if command -v "$c" >/dev/null 2>&1 \
            && "$c" -c "$CHECK" 2>/dev/null; then
        PY=$c
        break
    fi
done
if [ -z "$PY" ]; then
    echo "gpu-check: no CUDA here, nothing to check. Looked at:"
    for c in $candidates; do
        command -v "$c" >/dev/null 2>&1 || { echo "  $c: not found"; continue; }
        echo "  $c: $("$c" -c 'import torch; print("torch", torch.__version__, "sees no CUDA device")' 2>&1 | tail -1)"
    done
    exit 0
fi

SITE=$(mktemp -d /tmp/ckpt-gpu-site-XXXXXX)
LOGS=benchmarks/results/gpu-logs
mkdir -p "$LOGS"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
missing_modules() {
    local pair out=""
    for pair in $NEEDED; do
        "$PY" -c "import ${pair%%:*}" 2>/dev/null || out="$out ${pair#*:}"
    done
    echo "$out"
}
missing=$(missing_modules)
if [ -n "$missing" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
        || { echo "gpu-check: installing the carried wheels failed"; exit 1; }
    missing=$(missing_modules)
fi
if [ -n "$missing" ]; then
    echo "gpu-check: missing on this machine:$missing"
    echo "  run 'bash scripts/gpu-check.sh --fetch-wheels' where pip works and carry scripts/.gpu-wheels"
    exit 1
fi
if ! "$PY" -c "import ckpt.migrations" 2>/dev/null; then
    # migrations/ ships inside the package as ckpt.migrations: an install, not just PYTHONPATH=src.
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . \
        >"$LOGS/install.log" 2>&1 \
        || { echo "gpu-check: installing ckpt failed:"; tail -20 "$LOGS/install.log"; exit 1; }
fi
GPU=$("$PY" -c "import torch as t; c = t.cuda.is_available()
print(t.cuda.get_device_name(0) if c else 'no GPU (rehearsal)', '| torch', t.__version__, '| CUDA', t.version.cuda)")
echo "gpu-check: $GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

# 1. The CUDA tests (a collection error in a test file that needs something absent here must not stop them).
timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests/ \
    2>&1 | tee "$LOGS/pytest-gpu.log"
tests_rc=${PIPESTATUS[0]}

# 2. The GPU benchmark cases, in what is left of ten minutes (3 repetitions; fewer if time is short).
left=$(( 570 - ($(date +%s) - started) ))
reps=3
[ "$left" -lt 300 ] && reps=1
NAME=gpu-latest
BENCH_ARGS=(--reps "$reps")
[ -n "$ON_CPU" ] && NAME=gpu-rehearsal && BENCH_ARGS=(--quick --gpu-device cpu)
timeout "$left" "$PY" benchmarks/run.py --only gpu "${BENCH_ARGS[@]}" --name "$NAME" \
    --note "$(nproc) CPUs, $GPU" \
    2>&1 | tee "$LOGS/bench-gpu.log"
bench_rc=${PIPESTATUS[0]}

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp benchmarks/results/"$NAME".json benchmarks/results/"$NAME".md "$OUT"/ 2>/dev/null
    cp "$LOGS"/pytest-gpu.log "$LOGS"/bench-gpu.log "$OUT"/ 2>/dev/null
fi
rm -rf "$SITE"
echo "gpu-check: pytest -m gpu exit $tests_rc, benchmark exit $bench_rc, $(( $(date +%s) - started )) s"
[ "$tests_rc" -eq 0 ] || [ "$tests_rc" -eq 5 ] || exit 1   # 5: no test selected
[ "$bench_rc" -eq 0 ] || exit 1
