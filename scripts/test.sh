#!/usr/bin/env bash
# Run every test: lint, format, types (package, tests, benchmarks), the Python suite, the Milvus
# server tier and the TypeScript client's suite, on the versions uv.lock pins.
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

# The integration tier: the Milvus engine's conformance suite and the replica test against a real
# Milvus standalone server (about 6 minutes). PyPI has that server for Linux x86-64 only.
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "skipping the Milvus server tier: its server package exists for Linux x86-64 only" >&2
elif [ "${NACHBAR_SKIP_MILVUS_SERVER:-0}" = "1" ]; then
  echo "skipping the Milvus server tier (NACHBAR_SKIP_MILVUS_SERVER=1)" >&2
else
  bash scripts/milvus_server.sh test -q
fi

(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
