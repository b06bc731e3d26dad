#!/usr/bin/env bash
# Run every test: lint, format, types (package, tests, benchmarks), the Python suite and the
# TypeScript client's suite, on the versions uv.lock pins.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
export NACHBAR_TEST_MODEL_DIR="${NACHBAR_TEST_MODEL_DIR:-${NACHBAR_MODEL_DIR:-$HOME/.cache/nachbar/models}}"
export HF_HUB_OFFLINE=1
.venv/bin/nachbar models build --model-dir "$NACHBAR_TEST_MODEL_DIR"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
