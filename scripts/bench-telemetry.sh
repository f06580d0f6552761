#!/usr/bin/env bash
# What telemetry costs: gRPC Check throughput and latency of three servers measured
# alternately in one run (docs/benchmarks.md, issue 12):
#   off      decision_log: off, no OTLP (metrics are always recorded for /metrics)
#   defaults the shipped defaults: metrics, the decision log on stderr (to a file here)
#   tracing  defaults + every span exported over OTLP/gRPC (100% sampling) to a local sink
# Usage: scripts/bench-telemetry.sh [ROUNDS] [DURATION]   (default 3 rounds of 10s each)
# ISOLATE_SINK=1: the OTLP sink alone on CPU 1, servers and load generator on CPU 0, so the
# receiver (a collector elsewhere, in a deployment) takes nothing from the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-10s}
cargo build --release --bins --example otlp_sink >&2
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
sink_port=$(free_port)
if [ "${ISOLATE_SINK:-}" = 1 ]; then
  on_sink=(taskset -c 1)
  on_servers=(taskset -c 0)
else
  on_sink=()
  on_servers=()
fi
"${on_sink[@]}" ./target/release/examples/otlp_sink "$sink_port" >"$work/sink.log" &
pids+=($!)

declare -A grpc pid
start() { # name, decision_log line, extra env
  local name=$1 log=$2
  shift 2
  local g h
  g=$(free_port)
  h=$(free_port)
  sed -e "s/127.0.0.1:50051/127.0.0.1:$g/" -e "s/127.0.0.1:8080/127.0.0.1:$h/" config/demo.yaml >"$work/$name.yaml"
  printf '%s\n' "$log" >>"$work/$name.yaml"
  "${on_servers[@]}" env "$@" ./target/release/cedargate --config "$work/$name.yaml" 2>"$work/$name.log" &
  pids+=($!)
  pid[$name]=$!
  grpc[$name]=$g
}
start off "decision_log: { to: off }"
start defaults ""
start tracing "" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
  OTEL_TRACES_SAMPLER=always_on OTEL_METRIC_EXPORT_INTERVAL=5000
sleep 2

sink_pid=${pids[0]}
echo "| round | server | throughput | p50 ms | p99 ms | server CPU µs/check | sink CPU µs/check |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for name in off defaults tracing; do
    server_before=$(cpu_ticks "${pid[$name]}")
    sink_before=$(cpu_ticks "$sink_pid")
    load_prefix=("${on_servers[@]}")
    load --addr "http://127.0.0.1:${grpc[$name]}" --concurrency 32 --duration "$duration" --warmup 2s
    server_cpu=$(($(cpu_ticks "${pid[$name]}") - server_before))
    sink_cpu=$(($(cpu_ticks "$sink_pid") - sink_before))
    [ "$errors" = 0 ] || { echo "$name: $errors errors" >&2; exit 1; }
    # CPU over warm-up and measurement, per measured request: an upper bound, comparable
    # between the servers.
    per_check=$(per_request "$server_cpu" "$requests")
    sink_per_check=$(per_request "$sink_cpu" "$requests")
    echo "| $round | $name | $throughput | $p50 | $p99 | $per_check | $sink_per_check |"
  done
done
echo
echo "sink: $(tail -1 "$work/sink.log" 2>/dev/null || echo nothing yet)"
echo "decision records written by 'defaults': $(grep -c '"event":"cedargate.decision"' "$work/defaults.log")"
echo "steal: $(awk '/^cpu /{print "steal jiffies " $9}' /proc/stat)"
