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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME BIN_DIR ENV: one server on free ports; sets ${NAME}_GRPC and ${NAME}_METRICS.
start() {
  local name=$1 bin=$2 env=$3 grpc metrics data=off
  grpc=$(free_port)
  metrics=$(free_port)
  if [ -n "${DURABLE:-}" ]; then data="$DIR/data-$name"; fi
  env ${env:+"$env"} taskset -c 0 "$bin/interlude" --listen "127.0.0.1:$grpc" \
    --metrics-listen "127.0.0.1:$metrics" --http-listen off --demo false --data-dir "$data" \
    --admin-token "$TOKEN" >"$DIR/$name.log" 2>&1 &
  PIDS+=($!)
  disown "$!" # no job-control notice when cleanup kills it
  printf -v "${name}_GRPC" '%s' "$grpc"
  printf -v "${name}_METRICS" '%s' "$metrics"
}

# load BIN_DIR GRPC METRICS [args...]: the harness against one server.
load() {
  local bin=$1 grpc=$2 metrics=$3
  shift 3
  taskset -c 1 "$bin/interlude-load" --target "http://127.0.0.1:$grpc" \
    --server-metrics "http://127.0.0.1:$metrics/metrics" --bare-metrics off --admin-token "$TOKEN" \
    --campaigns "${CAMPAIGNS:-10000}" --listeners "${LISTENERS:-100000}" "$@"
}

start A "$A" "${ENV_A:-}"
start B "$B" "${ENV_B:-}"
# Seeding waits for each server to answer (the harness retries its first connection).
load "$A" "$A_GRPC" "$A_METRICS" --workload decide --duration 1 --warmup 0 >"$DIR/seed-A.out" 2>&1
load "$B" "$B_GRPC" "$B_METRICS" --workload decide --duration 1 --warmup 0 >"$DIR/seed-B.out" 2>&1
echo "build phase req/s server-cpu-µs-a-request [impressions recorded]"
for _ in $(seq "$ROUNDS"); do
  for name in A B; do
    bin=$A grpc=$A_GRPC metrics=$A_METRICS
    if [ "$name" = B ]; then bin=$B grpc=$B_GRPC metrics=$B_METRICS; fi
    load "$bin" "$grpc" "$metrics" --no-seed --warmup 1 "$@" >"$DIR/phase.out" 2>&1
    line=$(grep -E '^(Decide|HealthCheck|DecideAndRecord|BareCheck) ' "$DIR/phase.out" | awk '{printf "%s %s %s", $1, $3, $9}')
    recorded=$(grep -o 'impressions recorded [0-9]*' "$DIR/phase.out" | head -1 | awk '{print $3}')
    echo "$name $line ${recorded:-}"
  done
done
for name in A B; do
  pid=${PIDS[$([ "$name" = A ] && echo 0 || echo 1)]}
  echo "$name resident $(grep VmRSS "/proc/$pid/status" | awk '{print $2, $3}')"
done
