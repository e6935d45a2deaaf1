#!/usr/bin/env bash
# Run a model server and the worker sidecar in one container.
#
#   supervise.sh BACKEND MODEL-SERVER-COMMAND...
#
# Starts the model server (which must listen on 127.0.0.1:$MODEL_PORT), polls its health
# path until it answers 200 (never parses its logs), then starts `inference-worker
# --backend BACKEND` in front of it. On SIGTERM/SIGINT the worker drains first (in-flight
# requests finish, up to $GRACE_S), then the model server is stopped. If either process
# exits on its own, the other is stopped and the container exits with that status.
#
# Environment: ENDPOINT and PUBLIC_URL (required), ROUTER_URL, WORKER_REGISTER_TOKEN
# (read by inference-worker itself), PERF, MAX_LOAD, WORKER_PORT (3000), MODEL_PORT (8000),
# MODEL_HEALTH_PATH (/health), MODEL_LOAD_TIMEOUT_S (1800), GRACE_S (30), WORKER_ARGS
# (extra inference-worker flags, split on whitespace).
set -euo pipefail

backend="${1:?usage: supervise.sh BACKEND MODEL-SERVER-COMMAND...}"
shift
: "${ENDPOINT:?set ENDPOINT to the router endpoint this worker serves}"
: "${PUBLIC_URL:?set PUBLIC_URL to the URL clients reach this worker at (tickets name it)}"
model_url="http://127.0.0.1:${MODEL_PORT:-8000}"
health_url="${model_url}${MODEL_HEALTH_PATH:-/health}"
load_timeout_s="${MODEL_LOAD_TIMEOUT_S:-1800}"
python="${WORKER_PYTHON:-/opt/inference-worker/bin/python}"

model_pid=""
worker_pid=""

log() {
    printf '%s supervise: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

stop_pid() {  # SIGTERM one child and wait for it to exit
    local pid="$1"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" || true
    fi
}

# shellcheck disable=SC2329  # called by the trap below
shutdown() {
    trap '' TERM INT
    log "signal received: draining the worker, then stopping the model server"
    stop_pid "$worker_pid"
    stop_pid "$model_pid"
    exit 0
}
trap shutdown TERM INT

model_healthy() {
    "$python" -c 'import sys, urllib.request
try:
    ok = urllib.request.urlopen(sys.argv[1], timeout=2).status == 200
except Exception:
    ok = False
sys.exit(0 if ok else 1)' "$health_url"
}

log "starting the model server: $*"
"$@" &
model_pid=$!

deadline=$((SECONDS + load_timeout_s))
until model_healthy; do
    if ! kill -0 "$model_pid" 2>/dev/null; then
        rc=0
        wait "$model_pid" || rc=$?
        log "the model server exited (status $rc) before it was healthy"
        exit $((rc == 0 ? 1 : rc))
    fi
    if ((SECONDS >= deadline)); then
        log "the model server is not healthy at $health_url after ${load_timeout_s}s"
        stop_pid "$model_pid"
        exit 1
    fi
    sleep 2 &
    wait $! || true  # a background sleep lets a signal's trap run at once
done
log "the model server is healthy; starting the worker"

args=(--backend "$backend" --backend-url "$model_url" --host 0.0.0.0
      --port "${WORKER_PORT:-3000}" --endpoint "$ENDPOINT" --public-url "$PUBLIC_URL"
      --grace-s "${GRACE_S:-30}")
if [[ -n "${ROUTER_URL:-}" ]]; then args+=(--router-url "$ROUTER_URL"); fi
if [[ -n "${PERF:-}" ]]; then args+=(--perf "$PERF"); fi
if [[ -n "${MAX_LOAD:-}" ]]; then args+=(--max-load "$MAX_LOAD"); fi
if [[ -n "${WORKER_ARGS:-}" ]]; then
    read -r -a extra <<<"$WORKER_ARGS"
    args+=("${extra[@]}")
fi
inference-worker "${args[@]}" &
worker_pid=$!

rc=0
wait -n "$model_pid" "$worker_pid" || rc=$?
if kill -0 "$worker_pid" 2>/dev/null; then
    log "the model server exited (status $rc); stopping the worker"
    stop_pid "$worker_pid"
else
    log "the worker exited (status $rc); stopping the model server"
    stop_pid "$model_pid"
fi
exit $((rc == 0 ? 1 : rc))  # a child ending on its own is a failure to restart on
