#!/usr/bin/env bash
# mypy --strict over the whole package. The repo's folders install as nachbar.* through a
# package-dir mapping that mypy cannot follow, so check a tree of symlinks laid out by import
# path, from outside the repo so that mypy does not also see the folders as top-level modules.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$repo/build/typecheck"
mkdir -p "$tree/nachbar"
link() { ln -sfn "$repo/$1" "$tree/nachbar/$2"; }
link db db
link ai ai
link server server
link cli cli
link clients/python client
link proto/nachbar/v1 v1
cd "$tree"
MYPYPATH="$tree" "$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" \
  --cache-dir "$repo/.mypy_cache" \
  -p nachbar.db -p nachbar.ai -p nachbar.server -p nachbar.cli -p nachbar.client "$@"
