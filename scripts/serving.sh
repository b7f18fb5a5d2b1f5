# Sourced by the benchmark scripts (ab.sh, openloop.sh, durable_rounds.sh, cluster.sh, overload.sh,
# soak.sh): waiting for a server started in the background until its log says where it serves.

# wait_for_log LOG PATTERN PID: returns once LOG has PATTERN; if PID exits first, or 30 s pass,
# prints the log and exits the script.
wait_for_log() {
  local log=$1 pattern=$2 pid=$3
  for _ in $(seq 600); do
    grep -q "$pattern" "$log" && return
    kill -0 "$pid" 2>/dev/null || break # it exited: say why at once
    sleep 0.05
  done
  echo "server did not start ($log): $(cat "$log")" >&2
  exit 1
}

# wait_for_interlude LOG PID: `wait_for_log` for Interlude's serving line; sets GRPC and METRICS
# to the addresses it logged (the kernel picks them for port 0).
wait_for_interlude() {
  wait_for_log "$1" grpc_addr "$2"
  GRPC=$(grep -o 'grpc_addr=[0-9.:]*' "$1" | head -1 | cut -d= -f2)
  METRICS=$(grep -o 'metrics_addr="[0-9.:]*' "$1" | head -1 | cut -d'"' -f2)
}
