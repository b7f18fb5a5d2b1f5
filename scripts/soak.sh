#!/usr/bin/env bash
# Soak: mixed load (Decide + RecordEvents, open loop) against a durable release server for
# SOAK_SECS (default 1800), sampling the server's RSS every 10 s. Stops by itself; loopback only.
# Prints the RSS growth after the warm-up (SOAK_WARMUP_SECS, default 900: longer than the dedupe
# window of the 60 s tokens used here, so every bounded structure has reached its steady state).
#   scripts/soak.sh            # 30 min at 2,000 requests/s
#   SOAK_SECS=120 SOAK_WARMUP_SECS=60 scripts/soak.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serving.sh
secs=${SOAK_SECS:-1800}
warmup=${SOAK_WARMUP_SECS:-900}
rate=${SOAK_RATE:-2000}
out=${SOAK_OUT:-target/soak}
token=soak-admin-token-0123456789

cargo build --release --bins --quiet
mkdir -p "$out"
data=$(mktemp -d)
log="$out/server.log"
target/release/interlude --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --demo false \
  --data-dir "$data" --admin-token "$token" --token-ttl-secs 60 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
wait_for_interlude "$log" "$server"
grpc=$GRPC
metrics=$METRICS

rss_csv="$out/rss.csv"
echo "seconds,rss_kib" >"$rss_csv"
(
  start=$(date +%s)
  while kill -0 $server 2>/dev/null; do
    echo "$(( $(date +%s) - start )),$(awk '/VmRSS/{print $2}' /proc/$server/status)" >>"$rss_csv"
    sleep 10
  done
) &
sampler=$!

target/release/interlude-load --target "http://$grpc" --server-metrics "http://$metrics/metrics" \
  --admin-token "$token" --campaigns 10000 --listeners 100000 --workload decide-and-record \
  --rate "$rate" --duration "$secs" --warmup 5 --json "$out/report.json" | tee "$out/report.txt"

kill $sampler 2>/dev/null || true
python3 - "$rss_csv" "$warmup" <<'PY'
import csv, sys
rows = [(int(r["seconds"]), int(r["rss_kib"])) for r in csv.DictReader(open(sys.argv[1])) if r["rss_kib"]]
warm = int(sys.argv[2])
after = [r for r in rows if r[0] >= warm]
if not after:
    sys.exit("soak shorter than its warm-up")
base, last, peak = after[0][1], after[-1][1], max(r[1] for r in after)
print(f"rss: {rows[0][1]} KiB at start, {base} KiB at {after[0][0]} s (after warm-up), "
      f"{last} KiB at {after[-1][0]} s, peak {peak} KiB; growth after warm-up {100 * (last - base) / base:+.1f} %")
PY
