#!/usr/bin/env bash
# Overload: goodput and admitted latency at 1× and at 5–10× the server's capacity. Loopback
# only; bounded (a few phases of OVERLOAD_SECS each); stops by itself.
#
# One core cannot offer ten times what another core serves, so the server (pinned to core 0)
# is held to OVERLOAD_QUOTA % of it by a cgroup-v1 CPU quota, and the load comes from core 1:
# h2load (C, open loop: 64 connections at a fixed `--rps` each, at most 16 streams in flight
# per connection) as the overload, and the harness's open loop at 5 % of capacity as the probe
# whose admitted latency is measured (p50 / p99 of the calls answered OK). Goodput is the
# server's own count of Decides answered OK per second (its /metrics); shed, its
# RESOURCE_EXHAUSTED; offered, their sum (what reached the server).
#   scripts/overload.sh                  # 15 % of core 0, 10 s phases
#   OVERLOAD_QUOTA=25 scripts/overload.sh
# Needs root (cgroup) and h2load (Debian nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serving.sh
quota=${OVERLOAD_QUOTA:-15}
secs=${OVERLOAD_SECS:-10}
out=${OVERLOAD_OUT:-target/overload}
token=overload-admin-token-0123456789
command -v h2load >/dev/null || { echo "overload.sh needs h2load (apt-get install nghttp2-client)" >&2; exit 69; }

cargo build --release --bins --quiet
mkdir -p "$out"
log="$out/server.log"
taskset -c 0 target/release/interlude --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --http-listen off --demo false --data-dir off --admin-token "$token" ${OVERLOAD_SERVER_ARGS:-} 2>"$log" &
server=$!
cg=/sys/fs/cgroup/cpu/interlude-overload
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rmdir $cg 2>/dev/null || true' EXIT
wait_for_interlude "$log" "$server"
grpc=$GRPC
metrics=$METRICS

L="taskset -c 1 target/release/interlude-load --target http://$grpc --server-metrics http://$metrics/metrics --admin-token $token"
# Seed at full speed, then hold the server to its quota.
$L --campaigns 10000 --listeners 10000 --workload decide --duration 2 --warmup 1 >/dev/null
mkdir -p $cg
echo 10000 >$cg/cpu.cfs_period_us
echo $((quota * 100)) >$cg/cpu.cfs_quota_us
for tid in /proc/$server/task/*; do echo "${tid##*/}" >$cg/tasks; done

ok() { # Decides the server answered OK
  curl -s "http://$metrics/metrics" |
    awk '/^interlude_rpc_requests_total\{/ && /rpc="Decide"/ && /grpc_status="OK"/ { v = $NF } END { print v + 0 }'
}
shed_total() { curl -s "http://$metrics/metrics" | awk '/^interlude_calls_shed_total/ { v = $NF } END { print v + 0 }'; }

echo "== capacity under the quota (closed loop, 32 workers)"
$L --no-seed --workload decide --duration "$secs" --warmup 2 --json "$out/capacity.json" | tail -3
capacity=$(python3 -c "import json;print(int(json.load(open('$out/capacity.json'))['phases'][0]['throughput_per_sec']))")
echo "capacity $capacity/s"

phase() { # phase NAME PROBE_RATE [h2load args...]
  local name=$1 rate=$2; shift 2
  local ok0 shed0 t0 ok1 shed1 t1
  ok0=$(ok); shed0=$(shed_total); t0=$(date +%s.%N)
  if [ $# -gt 0 ]; then
    taskset -c 1 h2load "$@" >"$out/$name.h2load.txt" 2>&1 &
    local h2=$!
  fi
  $L --no-seed --workload decide --rate "$rate" --max-in-flight 100000 --connections 4 \
    --duration "$secs" --warmup 1 --json "$out/$name.json" >"$out/$name.txt"
  ok1=$(ok); shed1=$(shed_total); t1=$(date +%s.%N)
  [ $# -gt 0 ] && wait $h2 || true
  python3 - "$out/$name.json" "$name" "$ok0" "$ok1" "$shed0" "$shed1" "$t0" "$t1" "$capacity" <<'PY'
import json, sys
report, name, ok0, ok1, shed0, shed1, t0, t1, capacity = sys.argv[1:]
p = json.load(open(report))["phases"][0]
secs = float(t1) - float(t0)
goodput = (float(ok1) - float(ok0)) / secs
shed = (float(shed1) - float(shed0)) / secs
offered = goodput + shed
lat = p["latency_us"]
print(f"| {name} | {offered:,.0f}/s ({offered / float(capacity):.1f}×) | {goodput:,.0f}/s ({goodput / float(capacity):.2f}×) "
      f"| {shed:,.0f}/s | {lat['p50'] / 1000:.2f} / {lat['p99'] / 1000:.2f} / {lat['max'] / 1000:.1f} ms "
      f"| {p['requests_ok']:,} ok, {sum(p['errors'].values()):,} shed |")
PY
}

body="$out/decide.bin"
$L --write-h2load-body "$body" >/dev/null

echo "| phase | offered (server's count) | goodput (Decides OK) | shed | probe p50 / p99 / max | probe calls |"
echo "|---|---:|---:|---:|---:|---:|"
probe=$((capacity / 20))
for x in 1 5 10; do
  # 64 connections at a fixed rate each (open loop: h2load keeps its rate however the server
  # answers), up to 16 streams in flight per connection; h2load's own report is in $out.
  phase "${x}x" "$probe" -c 64 -m 16 -t 1 --rps $(( (capacity * x - probe) / 64 )) -D $((secs + 2)) -d "$body" \
    -H 'content-type: application/grpc' -H 'te: trailers' "http://$grpc/interlude.v1.AdDecisionService/Decide"
done
