#!/usr/bin/env bash
# Cluster mode on one machine, for measurements: a 6-node Redis Cluster (3 masters, 3
# replicas) and N Interlude replicas on loopback (free ports), then `interlude-load` with the
# arguments given, spread over the replicas; everything is torn down at exit. Bounded: the
# harness's phases end by themselves.
#
#   scripts/cluster.sh 3 --campaigns 1000 --listeners 10000 --duration 10
#   scripts/cluster.sh 3 --campaigns 1000 --listeners 10000 --duration 20 --kill-redis-master-after 8
#   scripts/cluster.sh 0 ...   # the same load on one single-node server (memory only;
#                              # SINGLE_DURABLE=1: on SQLite, the default mode)
#
# REPLICA_CPUS / LOAD_CPUS / REDIS_CPUS (taskset lists) pin the replicas, the harness and the
# Redis nodes (each unpinned when unset).
# REPLICA_ARGS adds settings to every replica (e.g. "--redis-wait-replicas 0").
# BIN_DIR runs the binaries of another build (default target/release), for before/after runs.
# Needs redis-server and redis-cli (Debian redis-server) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serving.sh
REPLICAS=${1:?usage: scripts/cluster.sh REPLICAS [interlude-load args...]}
shift
TOKEN=cluster-bench-admin-token-0123456789
BIN=${BIN_DIR:-target/release}
DIR=$(mktemp -d /tmp/interlude-cluster.XXXXXX)
cleanup() {
  # Every process started here wrote its pid to $DIR/pids (replicas start in subshells).
  while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$DIR/pids"
  wait 2>/dev/null || true
  # The replicas' logs stay for a look afterwards.
  mkdir -p target/cluster-logs && cp "$DIR"/interlude-*.log target/cluster-logs/ 2>/dev/null || true
  rm -rf "$DIR"
}
: >"$DIR/pids"
: >"$DIR/metrics"
trap cleanup EXIT

free_port() {
  python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55535:
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 10000)); print(p); break
        except OSError:
            pass'
}

pin() { # pin CPUS command...
  local cpus=$1; shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# Like pin, replacing the calling (background) subshell, so that its $! is the process itself.
spawn_pinned() {
  local cpus=$1; shift
  if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# Starts one interlude with the given extra args; prints its gRPC address.
start_interlude() {
  local log="$DIR/interlude-$RANDOM.log"
  spawn_pinned "${REPLICA_CPUS:-}" "$BIN/interlude" --listen 127.0.0.1:0 --http-listen off \
    --metrics-listen 127.0.0.1:0 --demo false --admin-token "$TOKEN" ${REPLICA_ARGS:-} "$@" >/dev/null 2>"$log" &
  local pid=$!
  echo "$pid" >>"$DIR/pids"
  wait_for_interlude "$log" "$pid"
  echo "$METRICS" >>"$DIR/metrics"
  echo "$GRPC"
}

TARGETS=()
if [ "$REPLICAS" -eq 0 ]; then
  # SINGLE_DURABLE=1: the default single-node mode (SQLite in a data directory) instead.
  if [ -n "${SINGLE_DURABLE:-}" ]; then DATA="$DIR/data"; else DATA=off; fi
  TARGETS+=("http://$(start_interlude --data-dir "$DATA")")
  REDIS_ARGS=()
else
  NODES=()
  for _ in 1 2 3 4 5 6; do
    port=$(free_port)
    spawn_pinned "${REDIS_CPUS:-}" redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 1000 \
      --cluster-replica-validity-factor 0 --save "" --appendonly no --dir "$DIR" \
      --logfile "redis-$port.log" >/dev/null &
    echo $! >>"$DIR/pids"
    NODES+=("127.0.0.1:$port")
  done
  for node in "${NODES[@]}"; do
    until [ "$(redis-cli -p "${node##*:}" ping 2>/dev/null)" = PONG ]; do sleep 0.05; done
  done
  redis-cli --cluster create "${NODES[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  for node in "${NODES[@]}"; do
    until redis-cli -p "${node##*:}" cluster info | grep -q cluster_state:ok; do sleep 0.05; done
  done
  # Every master's replica in sync: until then no write can be acknowledged (WAIT 1).
  for node in "${NODES[@]}"; do
    port=${node##*:}
    until redis-cli -p "$port" role | head -1 | grep -q slave \
      || redis-cli -p "$port" info replication | grep -q 'slave0:.*state=online'; do sleep 0.05; done
  done
  SEEDS=$(IFS=,; echo "${NODES[*]}")
  for _ in $(seq "$REPLICAS"); do
    TARGETS+=("http://$(start_interlude --redis-nodes "$SEEDS")")
  done
  REDIS_ARGS=(--redis-node "${NODES[0]}")
fi
LIST=$(IFS=,; echo "${TARGETS[*]}")
echo "replicas: $LIST" >&2
# With one server, the report gives its CPU per request (read from its /metrics).
METRICS=off
if [ "${#TARGETS[@]}" -eq 1 ]; then METRICS="http://$(head -1 "$DIR/metrics")/metrics"; fi
pin "${LOAD_CPUS:-}" "$BIN/interlude-load" --targets "$LIST" --admin-token "$TOKEN" \
  --server-metrics "$METRICS" "${REDIS_ARGS[@]}" "$@"
