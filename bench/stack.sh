# shellcheck shell=bash
# A local stack for load tests, sourced by run_locust.sh and soak.sh: a private
# redis-server, a router on the Redis store and N synthetic workers, all on 127.0.0.1
# and free ports. Everything lives in $STACK_DIR; stack_stop (run it from a trap) stops it.
#
#   stack_start N_WORKERS    sets ROUTER_URL, ROUTER_PID, REDIS_PORT, REDIS_PID,
#                            WORKER_PORTS[], WORKER_PIDS[]
#   stack_restart_worker I   starts worker I again on its port
#   stack_restart_redis      kills redis-server and starts it empty on the same port
#   stack_stop

PY=${PY:-.venv/bin/python}
STACK_DIR=${STACK_DIR:-$(mktemp -d)}
WORKER_TTFT_MS=${WORKER_TTFT_MS:-20}
WORKER_TOKENS_PER_S=${WORKER_TOKENS_PER_S:-400}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() {  # URL [seconds]
  local deadline=$((SECONDS + ${2:-20}))
  until curl -sf -o /dev/null "$1"; do
    if ((SECONDS > deadline)); then
      echo "stack: $1 did not answer" >&2
      return 1
    fi
    sleep 0.1
  done
}

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$STACK_DIR" --loglevel warning >>"$STACK_DIR/redis.log" 2>&1 &
  REDIS_PID=$!
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done
}

start_worker() {  # index
  local port=${WORKER_PORTS[$1]}
  "$PY" -m workers --backend synthetic --host 127.0.0.1 --port "$port" \
    --public-url "http://127.0.0.1:$port" --endpoint demo --router-url "$ROUTER_URL" \
    --ttft-ms "$WORKER_TTFT_MS" --tokens-per-s "$WORKER_TOKENS_PER_S" --log-level warning \
    >>"$STACK_DIR/worker-$1.log" 2>&1 &
  WORKER_PIDS[$1]=$!
}

stack_start() {  # n_workers
  local n=$1 i router_port
  REDIS_PORT=$(free_port)
  router_port=$(free_port)
  ROUTER_URL="http://127.0.0.1:$router_port"
  WORKER_PORTS=()
  WORKER_PIDS=()
  for ((i = 0; i < n; i++)); do WORKER_PORTS[i]=$(free_port); done
  start_redis
  {
    printf 'log_level = "warning"\n[server]\nport = %s\nshutdown_grace_s = 2\n' "$router_port"
    printf '[store]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT"
    printf '[signing]\nalgorithm = "ed25519"\n'
    printf '[[api_keys]]\nkey = "dev-key"\nendpoints = ["demo"]\n'
    printf '[[api_keys]]\nkey = "admin-key"\nadmin = true\n'
    printf '[[endpoints]]\nname = "demo"\ndefault_cost = 16\nmodels = ["demo"]\n'
    printf '[endpoints.health]\ninterval_s = 0.5\n'
    for ((i = 0; i < n; i++)); do
      printf '[[endpoints.workers]]\nurl = "http://127.0.0.1:%s"\n' "${WORKER_PORTS[i]}"
    done
  } >"$STACK_DIR/router.toml"
  "$PY" -m router serve --config "$STACK_DIR/router.toml" >>"$STACK_DIR/router.log" 2>&1 &
  ROUTER_PID=$!
  wait_http "$ROUTER_URL/livez"
  for ((i = 0; i < n; i++)); do start_worker "$i"; done
  for ((i = 0; i < n; i++)); do wait_http "http://127.0.0.1:${WORKER_PORTS[i]}/readyz" 30; done
  # the router's own polls must have marked them ready before load starts
  local deadline=$((SECONDS + 20))
  until [[ $(curl -s -H 'Authorization: Bearer admin-key' "$ROUTER_URL/api/v1/workers" |
    grep -o '"status":"ready"' | wc -l) -eq $n ]]; do
    if ((SECONDS > deadline)); then
      echo "stack: workers not ready on the router" >&2
      return 1
    fi
    sleep 0.2
  done
}

stack_restart_worker() {  # index
  start_worker "$1"
}

stack_restart_redis() {
  kill -9 "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  start_redis
}

stack_stop() {
  local pid
  for pid in "${WORKER_PIDS[@]}" "${ROUTER_PID:-}" "${REDIS_PID:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null
  done
  for pid in "${WORKER_PIDS[@]}" "${ROUTER_PID:-}" "${REDIS_PID:-}"; do
    [[ -n $pid ]] && wait "$pid" 2>/dev/null
  done
  return 0
}
