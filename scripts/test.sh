#!/usr/bin/env bash
# The test command of README.md: sets up the environment, runs the torch-free native tests under
# AddressSanitizer + UndefinedBehaviorSanitizer, then the Python test suite (CUDA cases skip
# without a GPU). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=$(bash scripts/setup_env.sh)

echo "[test] native core tests (ASan + UBSan)"
cmake -S . -B build-native -DDCHML_SANITIZE=ON >/dev/null
cmake --build build-native -j"$(nproc)" >/dev/null
ASAN_OPTIONS=detect_leaks=1 ./build-native/dchml_native_tests

echo "[test] python tests"
# Two pytest workers, one torch thread each: the suite is mostly single-threaded Python and small
# tensors, so two processes finish in about half the time of one, while two OpenMP threads per
# process on two cores would spin against each other. DCHML_TEST_WORKERS=0 runs in one process.
WORKERS=${DCHML_TEST_WORKERS:-2}
if [ "$WORKERS" = 0 ]; then
  "$PY" -m pytest -q "$@"
else
  OMP_NUM_THREADS=1 "$PY" -m pytest -q -n "$WORKERS" "$@"
fi
