#!/usr/bin/env bash
# The main job of README.md: sets up the environment, then trains DCHML and its ablation on the
# built-in synthetic data set, evaluates them and writes a report to ${1:-demo_out}/report.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=$(bash scripts/setup_env.sh)
"$PY" -m dchml demo --out "${1:-demo_out}"
