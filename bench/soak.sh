#!/usr/bin/env bash
# Soak: steady load on Redis + router + 4 synthetic workers for SOAK_S seconds, with a
# worker SIGKILLed and restarted and Redis restarted empty along the way; then a report
# of requests, failures by kind (each set against the fault windows), p50/p99 and the
# router's RSS before and after (bench/soak_report.py).
#
#   bench/soak.sh                 # 180 s
#   SOAK_S=600 USERS=40 bench/soak.sh
#
# Settings (environment): SOAK_S (default 180), USERS (default 24), WAIT_S (a user's
# pause between requests, default 0.5), RSS_GROWTH_MB (allowed router RSS growth,
# default 25), FAULT_WINDOW_S (failures this soon after a fault are its doing, default
# 5), RESULTS (default bench/results/soak-<time>). Needs redis-server and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_S=${SOAK_S:-180}
USERS=${USERS:-24}
RESULTS=${RESULTS:-bench/results/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS/stack"
export LOCUST_WAIT_S=${WAIT_S:-0.5}
export LOCUST_FAILURE_LOG="$RESULTS/failures.tsv"
: >"$LOCUST_FAILURE_LOG"
EVENTS="$RESULTS/events.tsv"
: >"$EVENTS"

# shellcheck source=bench/stack.sh
source bench/stack.sh
STACK_DIR="$RESULTS/stack"
LOCUST_PID=
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  [[ -n $LOCUST_PID ]] && kill "$LOCUST_PID" 2>/dev/null
  stack_stop
}
trap cleanup EXIT
stack_start 4
echo "soak: router $ROUTER_URL (pid $ROUTER_PID), $USERS users for ${SOAK_S}s; results in $RESULTS"

event() { printf '%s\t%s\n' "$(date +%s.%N | cut -c1-14)" "$1" | tee -a "$EVENTS"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$ROUTER_PID/status"; }

"$PY" -m locust -f bench/locustfile.py --host "$ROUTER_URL" --headless -u "$USERS" \
  -r "$USERS" -t "${SOAK_S}s" --csv "$RESULTS/locust" --only-summary --stop-timeout 15 \
  >"$RESULTS/locust.log" 2>&1 &
LOCUST_PID=$!

sleep 15  # warm up: connection pools, caches, first health reports
RSS_BEFORE=$(rss_kb)
event "start (router RSS ${RSS_BEFORE} kB)"

sleep $((SOAK_S / 3 - 15))
event "fault: SIGKILL worker 1"
kill -9 "${WORKER_PIDS[1]}"
sleep 5
event "fault end: worker 1 restarted"
stack_restart_worker 1

sleep $((SOAK_S / 3 - 5))
event "fault: redis-server killed, restarted empty"
stack_restart_redis
event "fault end: redis-server back (empty)"

set +e
wait "$LOCUST_PID"
LOCUST_RC=$?
set -e
LOCUST_PID=
RSS_AFTER=$(rss_kb)
event "end (router RSS ${RSS_AFTER} kB)"

"$PY" bench/soak_report.py --results "$RESULTS" --rss-before-kb "$RSS_BEFORE" \
  --rss-after-kb "$RSS_AFTER" --rss-growth-mb "${RSS_GROWTH_MB:-25}" \
  --fault-window-s "${FAULT_WINDOW_S:-5}" --soak-s "$SOAK_S" --users "$USERS" |
  tee "$RESULTS/report.md"
rc=${PIPESTATUS[0]}
[[ $LOCUST_RC -le 1 ]] || echo "locust exited with $LOCUST_RC" >&2
exit "$rc"
