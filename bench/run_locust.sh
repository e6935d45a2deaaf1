#!/usr/bin/env bash
# Run bench/locustfile.py headless for a bounded time and write its CSV summary.
#
#   bench/run_locust.sh                       # local stack: Redis + router + 4 workers
#   TARGET_HOST=https://router.example.com ROUTER_API_KEY=... bench/run_locust.sh
#
# Settings (environment): DURATION (default 30s), USERS (default 24), SPAWN_RATE
# (default 8), WORKERS (local stack size, default 4), RESULTS (output folder, default
# bench/results/locust-<time>). With TARGET_HOST set nothing is started: the users load
# that deployment (ROUTER_API_KEY, ROUTER_ENDPOINT as in the locustfile). Locally it
# needs redis-server and curl; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
USERS=${USERS:-24}
SPAWN_RATE=${SPAWN_RATE:-8}
WORKERS=${WORKERS:-4}
RESULTS=${RESULTS:-bench/results/locust-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"

if [[ -z ${TARGET_HOST:-} ]]; then
  # shellcheck source=bench/stack.sh
  source bench/stack.sh
  STACK_DIR="$RESULTS/stack"
  mkdir -p "$STACK_DIR"
  trap stack_stop EXIT
  stack_start "$WORKERS"
  TARGET_HOST=$ROUTER_URL
  echo "local stack: router $ROUTER_URL, $WORKERS synthetic workers, logs in $STACK_DIR"
fi

set +e
"${PY:-.venv/bin/python}" -m locust -f bench/locustfile.py --host "$TARGET_HOST" --headless \
  -u "$USERS" -r "$SPAWN_RATE" -t "$DURATION" --csv "$RESULTS/locust" --only-summary \
  --stop-timeout 10 2>&1 | tee "$RESULTS/locust.log"
rc=${PIPESTATUS[0]}
set -e
echo "CSV summary: $RESULTS/locust_stats.csv, failures: $RESULTS/locust_failures.csv"
exit "$rc"
