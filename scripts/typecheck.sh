#!/usr/bin/env bash
# mypy --strict over the package, the tests and the benchmarks. The repo's folders install as
# nachbar.* through a package-dir mapping that mypy cannot follow, so check a tree of symlinks
# laid out by import path, from outside the repo so that mypy does not also see the folders as
# top-level modules. The benchmarks are scripts that import each other by file name (bench/ on
# the path), as the tests that check them do.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$repo/build/typecheck"
mkdir -p "$tree/nachbar"
link() { ln -sfn "$repo/$1" "$tree/$2"; }
link db nachbar/db
link ai nachbar/ai
link server nachbar/server
link cli nachbar/cli
link clients/python nachbar/client
link proto/nachbar/v1 nachbar/v1
link tests tests
cd "$tree"
mypy=("$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" --cache-dir "$repo/.mypy_cache")
MYPYPATH="$tree:$repo/bench" "${mypy[@]}" \
  -p nachbar.db -p nachbar.ai -p nachbar.server -p nachbar.cli -p nachbar.client \
  -m nachbar.v1.codec -m nachbar.v1.defaults -p tests "$@"
cd "$repo/bench"
MYPYPATH="$tree" "${mypy[@]}" ./*.py "$@"
