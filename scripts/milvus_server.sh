#!/usr/bin/env bash
# The integration tier on a real Milvus standalone server (2.3, from the `milvus` PyPI package).
#
#   bash scripts/milvus_server.sh install   # its own virtualenv in build/milvus-server (pinned, hashed)
#   bash scripts/milvus_server.sh test [PYTEST ARGS]
#   bash scripts/milvus_server.sh bench [DB_BENCH ARGS]   # bench/db_bench.py --engine milvus on it
#
# `test` runs, inside a private network namespace whose one interface is loopback (Milvus's
# components listen on every interface, so nothing else may see them): a fresh standalone
# server on free ports, then the Milvus half of the conformance suite (tests/db, the Milvus
# engine's own tests, the replica test) against it over gRPC, then stops it. To run the same
# suite against your own cluster instead: NACHBAR_TEST_MILVUS_URI=http://host:19530
# [NACHBAR_TEST_MILVUS_TOKEN=user:password] .venv/bin/python -m pytest tests/db -k milvus
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

install() {
  if [ ! -x build/milvus-server/bin/milvus-server ]; then
    rm -rf build/milvus-server
    "$UV" venv --quiet build/milvus-server
    "$UV" pip install --quiet --python build/milvus-server/bin/python --require-hashes \
      -r requirements-milvus-server.txt
  fi
}

case "${1:-}" in
  install)
    install
    ;;
  test)
    shift
    install
    # --map-root-user: works without root where user namespaces are allowed.
    exec unshare --net --map-root-user -- bash -c '
      set -euo pipefail
      ip link set lo up
      data="$(mktemp -d)"
      trap "rm -rf \"\$data\"" EXIT
      .venv/bin/python -m tests.milvus_standalone "$data" > "$data/uri" &
      server=$!
      for _ in $(seq 240); do [ -s "$data/uri" ] && break; kill -0 $server; sleep 0.5; done
      export NACHBAR_TEST_MILVUS_URI="$(cat "$data/uri")"
      echo "Milvus standalone at $NACHBAR_TEST_MILVUS_URI"
      status=0
      .venv/bin/python -m pytest tests/db -k milvus -p no:cacheprovider "$@" || status=$?
      .venv/bin/python -m pytest tests/clients/test_replicas.py -p no:cacheprovider "$@" || status=$?
      kill -TERM $server; wait $server || true
      exit $status
    ' bash "$@"
    ;;
  bench)
    shift
    install
    [ -x bench/.venv/bin/python ] || bash bench/setup.sh
    exec unshare --net --map-root-user -- bash -c '
      set -euo pipefail
      ip link set lo up
      data="$(mktemp -d)"
      trap "rm -rf \"\$data\"" EXIT
      .venv/bin/python -m tests.milvus_standalone "$data" > "$data/uri" &
      server=$!
      for _ in $(seq 240); do [ -s "$data/uri" ] && break; kill -0 $server; sleep 0.5; done
      status=0
      bench/.venv/bin/python bench/db_bench.py --engine milvus --milvus-uri "$(cat "$data/uri")" "$@" || status=$?
      kill -TERM $server; wait $server || true
      exit $status
    ' bash "$@"
    ;;
  *)
    echo "usage: $0 install | test [pytest args] | bench [db_bench args]" >&2
    exit 2
    ;;
esac
