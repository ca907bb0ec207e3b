#!/usr/bin/env bash
# Makes the environment dchml needs, from nothing: a virtual environment (.venv, or $DCHML_VENV),
# PyTorch and the other dependencies, and the compiled extension (its CUDA kernels only when a GPU
# is visible or FORCE_CUDA=1: see setup.py). Idempotent: a second run reuses what is there and
# rebuilds only what changed. Sourced by scripts/test.sh and scripts/demo.sh; prints the venv's
# python path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${DCHML_VENV:-.venv}
TORCH_SPEC=${DCHML_TORCH_SPEC:-torch==2.14.1}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

quiet() {  # run a command, show its output only when it fails
  if ! "$@" >"$LOG" 2>&1; then cat "$LOG" >&2; echo "setup failed: $*" >&2; exit 1; fi
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  quiet python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch, torchvision, numpy, tqdm, matplotlib, scipy, h5py, PIL, pytest, faiss, ninja, setuptools, fastapi, uvicorn, python_multipart, httpx2, playwright, xdist" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC and dependencies (a few minutes the first time)" >&2
  # One resolver run for everything (torchvision with torch, so pip picks the release built for
  # this torch); --no-compile: Python compiles the modules it imports on first use instead of
  # all of torch's files up front.
  quiet "$PY" -m pip install --disable-pip-version-check --no-compile "$TORCH_SPEC" torchvision \
    numpy tqdm matplotlib scipy h5py pillow pytest faiss-cpu ninja setuptools wheel \
    fastapi uvicorn python-multipart httpx2 playwright pytest-xdist
  echo "[setup] installed after ${SECONDS}s" >&2
fi

if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "[setup] building dchml (incremental)" >&2
# build_ext --inplace keeps ninja's build folder, so later runs recompile only changed files;
# --force hands every build to ninja, which also notices a changed configuration (FORCE_CUDA) that
# setuptools' timestamp check would miss. The editable install (once) adds the `dchml` command.
if ! "$PY" setup.py build_ext --inplace --force >"$LOG" 2>&1; then cat "$LOG" >&2; echo "setup failed: build" >&2; exit 1; fi
grep -m1 "^dchml build:" "$LOG" >&2 || true
echo "[setup] built after ${SECONDS}s" >&2
if [ ! -x "$VENV/bin/dchml" ]; then
  DCHML_PREBUILT=1 quiet "$PY" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -e .
fi
echo "[setup] ready after ${SECONDS}s" >&2
echo "$PY"
