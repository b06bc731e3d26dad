#!/usr/bin/env bash
# From a fresh clone: install, build the offline default models, start nachbar-db and
# nachbar-ai, and run a cross-modal demo (sentences find photos, a photo finds sentences).
# Set KEEP_RUNNING=1 to leave the stack up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
export NACHBAR_MODEL_DIR="${NACHBAR_MODEL_DIR:-$HOME/.cache/nachbar/models}"
DB_PORT="${NACHBAR_DB_PORT:-1369}"
AI_PORT="${NACHBAR_AI_PORT:-1370}"
DATA_DIR="${NACHBAR_DATA_DIR:-$PWD/var/quickstart-data}"
export NACHBAR_DB_ADDRESS="127.0.0.1:$DB_PORT" NACHBAR_AI_ADDRESS="127.0.0.1:$AI_PORT"
nachbar=.venv/bin/nachbar

"$nachbar" models build --model-dir "$NACHBAR_MODEL_DIR"

mkdir -p var
"$nachbar" up --data-dir "$DATA_DIR" --model-dir "$NACHBAR_MODEL_DIR" \
  --db-port "$DB_PORT" --ai-port "$AI_PORT" --no-build > var/quickstart-up.log 2>&1 &
up_pid=$!
stop_stack() {
  if kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid"
    wait "$up_pid" || true
  fi
}
if [ "${KEEP_RUNNING:-0}" != "1" ]; then
  trap stop_stack EXIT
fi
for _ in $(seq 1 240); do
  if "$nachbar" ping --service all > /dev/null 2>&1; then break; fi
  if ! kill -0 "$up_pid" 2>/dev/null; then
    echo "nachbar up exited early:" >&2
    cat var/quickstart-up.log >&2
    exit 1
  fi
  sleep 0.5
done
"$nachbar" ping --service all

.venv/bin/python scripts/demo/demo.py

if [ "${KEEP_RUNNING:-0}" = "1" ]; then
  echo "The stack keeps running (pid $up_pid): db $NACHBAR_DB_ADDRESS, ai $NACHBAR_AI_ADDRESS."
  echo "Try: $nachbar search \"a photo of a dog\" --store demo-photos -k 3"
fi
