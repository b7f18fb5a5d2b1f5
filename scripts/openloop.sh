#!/usr/bin/env bash
# Open-loop latency at a fixed rate, a fresh server per run: the p99 figures of
# docs/PERFORMANCE.md ("Huge pages and the tail"). Each run starts Interlude (memory only) and the
# bare tonic server on core 0, seeds the world, then sends one workload at RATE from core 1 for
# 8 s after 2 s of warm-up, latency counted from each request's intended send time. Workloads
# alternate within a run and builds alternate between runs, so the machine's drift between
# minutes hits all alike. Bounded: RUNS × builds × workloads phases, then teardown.
#
#   scripts/openloop.sh RATE RUNS BIN_DIR [BIN_DIR...]
#   WORKLOADS="decide health-check bare-check bare-decide" scripts/openloop.sh 20000 3 target/release
#   ENV=MIMALLOC_ALLOW_THP=1 scripts/openloop.sh 20000 3 /tmp/before target/release
#
# A BIN_DIR holds `interlude`, `interlude-bare` and `interlude-load` of one build (e.g. a copy of
# target/release). LISTENERS (default 100000) and CAMPAIGNS (10000) size the world; WORKLOADS
# (default "decide") picks the phases; ENV adds one environment variable to both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serving.sh
USAGE="usage: scripts/openloop.sh RATE RUNS BIN_DIR [BIN_DIR...]"
RATE=${1:?$USAGE}
RUNS=${2:?$USAGE}
shift 2
[ $# -gt 0 ] || { echo "$USAGE" >&2; exit 2; }
TOKEN=openloop-admin-token-0123456789
DIR=$(mktemp -d /tmp/interlude-openloop.XXXXXX)
PIDS=()
stop_servers() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_servers; rm -rf "$DIR"' EXIT

# start BIN_DIR: a fresh Interlude and bare server on ports the kernel picks; sets GRPC,
# METRICS, BARE and BARE_METRICS.
start() {
  local bin=$1
  env ${ENV:+"$ENV"} taskset -c 0 "$bin/interlude" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --http-listen off --demo false --data-dir off --admin-token "$TOKEN" >"$DIR/interlude.log" 2>&1 &
  PIDS+=($!)
  disown "$!"
  wait_for_interlude "$DIR/interlude.log" "${PIDS[-1]}"
  env ${ENV:+"$ENV"} taskset -c 0 "$bin/interlude-bare" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    >"$DIR/bare.log" 2>&1 &
  PIDS+=($!)
  disown "$!"
  wait_for_log "$DIR/bare.log" "serving grpc.health.v1 on" "${PIDS[-1]}"
  BARE=$(grep -o 'serving grpc.health.v1 on [0-9.:]*' "$DIR/bare.log" | awk '{print $NF}')
  BARE_METRICS=$(grep -o 'metrics on http://[0-9.:]*' "$DIR/bare.log" | cut -d/ -f3)
}

# load BIN_DIR OUT [args...]: the harness against the servers of `start`.
load() {
  local bin=$1 out=$2
  shift 2
  taskset -c 1 "$bin/interlude-load" --target "http://$GRPC" --server-metrics "http://$METRICS/metrics" \
    --bare-target "http://$BARE" --bare-metrics "http://$BARE_METRICS/metrics" --admin-token "$TOKEN" \
    --campaigns "${CAMPAIGNS:-10000}" --listeners "${LISTENERS:-100000}" "$@" >"$out" 2>&1 ||
    { cat "$out" >&2; exit 1; }
}

echo "build workload rate req/s p50-µs p99-µs p99.9-µs max-µs server-cpu-µs-a-request server-busy"
for _ in $(seq "$RUNS"); do
  for bin in "$@"; do
    for workload in ${WORKLOADS:-decide}; do
      start "$bin"
      load "$bin" "$DIR/seed.out" --workload decide --duration 1 --warmup 0
      load "$bin" "$DIR/phase.out" --no-seed --workload "$workload" --rate "$RATE" \
        --max-in-flight 100000 --duration 8 --warmup 2
      grep -E '^(Decide|HealthCheck|BareCheck|BareDecide) ' "$DIR/phase.out" |
        awk -v b="$bin" -v w="$workload" -v r="$RATE" '{print b, w, r, $3, $4, $6, $7, $8, $9, $10}'
      stop_servers
    done
  done
done
