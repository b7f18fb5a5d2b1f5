#!/usr/bin/env bash
# Two builds side by side, for before/after figures on a noisy machine: one server of each build,
# both pinned to core 0 and seeded with the same world, then the same harness phase against A,
# B, A, B, … from core 1. The idle server costs nothing while the other is measured, and this
# machine's drift between minutes hits both alike. Bounded: ROUNDS × 2 phases, then teardown.
#
#   scripts/ab.sh BIN_DIR_A BIN_DIR_B ROUNDS [interlude-load args...]
#   scripts/ab.sh /tmp/before target/release 3 --workload decide --duration 5
#   DURABLE=1 LISTENERS=100000 scripts/ab.sh /tmp/before target/release 2 \
#     --workload decide-and-record --duration 8 --concurrency 64
#
# A BIN_DIR holds `interlude` and `interlude-load` of one build (e.g. a copy of target/release).
# LISTENERS (default 100000) and CAMPAIGNS (10000) size the world; DURABLE=1 gives each server
# its own data directory (SQLite, the default mode) instead of memory only; ENV_A / ENV_B add an
# environment variable to one server (e.g. ENV_B=MIMALLOC_PURGE_DELAY=1000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serving.sh
A=${1:?usage: scripts/ab.sh BIN_DIR_A BIN_DIR_B ROUNDS [interlude-load args...]}
B=${2:?usage: scripts/ab.sh BIN_DIR_A BIN_DIR_B ROUNDS [interlude-load args...]}
ROUNDS=${3:?usage: scripts/ab.sh BIN_DIR_A BIN_DIR_B ROUNDS [interlude-load args...]}
shift 3
TOKEN=ab-bench-admin-token-0123456789
DIR=$(mktemp -d /tmp/interlude-ab.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

# start NAME BIN_DIR ENV: one server on ports the kernel picks, waited for until it serves (as
# its log says); sets ${NAME}_GRPC, ${NAME}_METRICS, ${NAME}_PID.
start() {
  local name=$1 bin=$2 env=$3 data=off log="$DIR/$1.log"
  if [ -n "${DURABLE:-}" ]; then data="$DIR/data-$name"; fi
  env ${env:+"$env"} taskset -c 0 "$bin/interlude" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --http-listen off --demo false --data-dir "$data" --admin-token "$TOKEN" >"$log" 2>&1 &
  PIDS+=($!)
  printf -v "${name}_PID" '%s' "$!"
  disown "$!" # no job-control notice when cleanup kills it
  wait_for_interlude "$log" "${PIDS[-1]}"
  printf -v "${name}_GRPC" '%s' "$GRPC"
  printf -v "${name}_METRICS" '%s' "$METRICS"
}

# load BIN_DIR GRPC METRICS OUT [args...]: the harness against one server, its report in OUT
# (shown, and the script stopped, if the harness fails).
load() {
  local bin=$1 grpc=$2 metrics=$3 out=$4
  shift 4
  taskset -c 1 "$bin/interlude-load" --target "http://$grpc" \
    --server-metrics "http://$metrics/metrics" --bare-metrics off --admin-token "$TOKEN" \
    --campaigns "${CAMPAIGNS:-10000}" --listeners "${LISTENERS:-100000}" "$@" >"$out" 2>&1 ||
    { cat "$out" >&2; exit 1; }
}

start A "$A" "${ENV_A:-}"
start B "$B" "${ENV_B:-}"
load "$A" "$A_GRPC" "$A_METRICS" "$DIR/seed-A.out" --workload decide --duration 1 --warmup 0
load "$B" "$B_GRPC" "$B_METRICS" "$DIR/seed-B.out" --workload decide --duration 1 --warmup 0
echo "build phase req/s server-cpu-µs-a-request server-busy [impressions recorded, or with --workload record events accepted]"
for _ in $(seq "$ROUNDS"); do
  for name in A B; do
    bin=$A grpc=$A_GRPC metrics=$A_METRICS
    if [ "$name" = B ]; then bin=$B grpc=$B_GRPC metrics=$B_METRICS; fi
    load "$bin" "$grpc" "$metrics" "$DIR/phase.out" --no-seed --warmup 1 "$@"
    line=$(grep -E '^(Decide|HealthCheck|DecideAndRecord|BareCheck|Record) ' "$DIR/phase.out" | awk '{printf "%s %s %s %s", $1, $3, $9, $10}')
    recorded=$(grep -oE '(impressions|events) recorded [0-9]*' "$DIR/phase.out" | head -1 | awk '{print $3}')
    echo "$name $line ${recorded:-}"
  done
done
echo "A resident $(grep VmRSS "/proc/$A_PID/status" | awk '{print $2, $3}')"
echo "B resident $(grep VmRSS "/proc/$B_PID/status" | awk '{print $2, $3}')"
