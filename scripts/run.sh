#!/usr/bin/env bash
# Run the outbox relay (background) and the worker (foreground) until Ctrl-C.
# Called by `make run` after services, migrations and topics are in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
LOGS="${SA01_STATE_DIR:-$ROOT/.run}/logs"
mkdir -p "$LOGS"
export LITELLM_LOCAL_MODEL_COST_MAP=True
cd "$ROOT"

"$BIN/python" -m streams.preflight

"$BIN/faust" -A streams publish-outbox >>"$LOGS/relay.log" 2>&1 &
relay=$!
trap 'kill "$relay" 2>/dev/null || true; wait "$relay" 2>/dev/null || true' EXIT INT TERM
echo "[run] relay started (pid $relay, log $LOGS/relay.log)"
"$BIN/faust" -A streams worker -l "${SA01_LOG_LEVEL:-info}"
