#!/usr/bin/env bash
# How the durable record workload's cost moves as the store grows: one durable server (SQLite,
# pinned to core 0), seeded with the world, then ROUNDS record phases from core 1, each line
# with the store's size and the server's resident memory. With PERF=1 each phase runs under
# `perf record` (flat, with timestamps: OUT/rN.data), for comparing rounds' profiles per event
# (docs/PERFORMANCE.md, "Durable events as the store grows"); PERF_ARGS replaces perf's options
# (e.g. "-F 999 -T --call-graph dwarf" for callers). Bounded: ROUNDS phases, then teardown.
#
#   scripts/durable_rounds.sh BIN_DIR ROUNDS OUT_DIR [VAR=VALUE]
#   PERF=1 scripts/durable_rounds.sh target/release 5 /tmp/rounds INTERLUDE_HISTORY_CACHE_MIB=2048
#
# A BIN_DIR holds `interlude` and `interlude-load` of one build; VAR=VALUE is one environment
# variable for the server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serving.sh
USAGE="usage: scripts/durable_rounds.sh BIN_DIR ROUNDS OUT_DIR [VAR=VALUE]"
BIN=${1:?$USAGE}
ROUNDS=${2:?$USAGE}
OUT=${3:?$USAGE}
SERVER_ENV=${4:-}
TOKEN=rounds-bench-admin-token-0123456789
mkdir -p "$OUT"
DIR=$(mktemp -d /tmp/interlude-rounds.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

env ${SERVER_ENV:+"$SERVER_ENV"} taskset -c 0 "$BIN/interlude" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --http-listen off --demo false --data-dir "$DIR/data" --admin-token "$TOKEN" >"$OUT/server.log" 2>&1 &
PID=$!
wait_for_interlude "$OUT/server.log" "$PID"
load() {
  taskset -c 1 "$BIN/interlude-load" --target "http://$GRPC" --server-metrics "http://$METRICS/metrics" \
    --bare-metrics off --admin-token "$TOKEN" --campaigns "${CAMPAIGNS:-10000}" \
    --listeners "${LISTENERS:-100000}" "$@"
}
load --workload decide --duration 1 --warmup 0 >"$OUT/seed.out" 2>&1 || { cat "$OUT/seed.out" >&2; exit 1; }
echo "round calls/s server-cpu-µs-a-call server-busy events-recorded store-MB resident-kB"
for round in $(seq "$ROUNDS"); do
  PERF_PID=
  if [ -n "${PERF:-}" ]; then
    perf record ${PERF_ARGS:--F 1999 -T} -p "$PID" -o "$OUT/r$round.data" 2>/dev/null &
    PERF_PID=$!
  fi
  load --no-seed --warmup 1 --workload record --events-per-record 32 --duration 2 --record-stash 150000 \
    --concurrency 128 >"$OUT/r$round.out" 2>&1 || { cat "$OUT/r$round.out" >&2; exit 1; }
  if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
  echo "$round $(grep -E '^Record ' "$OUT/r$round.out" | awk '{print $3, $9, $10}')" \
    "$(grep -oE 'events recorded [0-9]*' "$OUT/r$round.out" | awk '{print $3}')" \
    "$(du -sm "$DIR/data" | cut -f1) $(grep VmRSS "/proc/$PID/status" | awk '{print $2}')"
done
