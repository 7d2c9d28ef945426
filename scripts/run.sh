#!/usr/bin/env bash
# Run the outbox relay and the background worker (background processes) and the replies
# worker (foreground) until Ctrl-C. Called by `make run` after services, migrations and
# topics are in place. The two workers share one consumer group: the replies worker
# answers conversations, the background worker drains memories, uploads and backups at a
# lower CPU priority (docs/operations.md, "Worker roles"); its web port is
# SA01_BACKGROUND_WEB_PORT (default SA01_WEB_PORT + 2, 6068). With SA01_WORKER_ROLE set
# (all, replies or background), one worker of that role runs instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
LOGS="${SA01_STATE_DIR:-$ROOT/.run}/logs"
mkdir -p "$LOGS"
export LITELLM_LOCAL_MODEL_COST_MAP=True
cd "$ROOT"

"$BIN/python" -m streams.preflight

pids=()
stop_background() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_background EXIT INT TERM

"$BIN/faust" -A streams publish-outbox >>"$LOGS/relay.log" 2>&1 &
pids+=($!)
echo "[run] relay started (pid $!, log $LOGS/relay.log)"

role="${SA01_WORKER_ROLE:-split}"
if [[ "$role" == "split" ]]; then
  port="${SA01_WEB_PORT:-6066}"
  background_port="${SA01_BACKGROUND_WEB_PORT:-$((port + 2))}"
  background_env=(SA01_WORKER_ROLE=background SA01_WEB_PORT="$background_port")
  if [[ -n "${SA01_WORKER_INSTANCE_ID:-}" ]]; then  # static members need ids of their own
    background_env+=(SA01_WORKER_INSTANCE_ID="$SA01_WORKER_INSTANCE_ID-background")
  fi
  env "${background_env[@]}" "$BIN/faust" -A streams worker -l "${SA01_LOG_LEVEL:-info}" \
    >>"$LOGS/background-worker.log" 2>&1 &
  pids+=($!)
  echo "[run] background worker started (pid $!, http://127.0.0.1:$background_port, log $LOGS/background-worker.log)"
  export SA01_WORKER_ROLE=replies
fi
"$BIN/faust" -A streams worker -l "${SA01_LOG_LEVEL:-info}"
