#!/usr/bin/env bash
# mypy --strict over the whole package. The repo's folders install as nachbar.* through a
# package-dir mapping that mypy cannot follow, so check a tree of symlinks laid out by import path.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
mkdir -p "$tree/nachbar"
link() { ln -sfn "$(pwd)/$1" "$tree/nachbar/$2"; }
link db db
link ai ai
link server server
link cli cli
link clients/python client
link proto/nachbar/v1 v1
MYPYPATH="$tree" .venv/bin/mypy -p nachbar.db -p nachbar.ai -p nachbar.server -p nachbar.cli -p nachbar.client "$@"
