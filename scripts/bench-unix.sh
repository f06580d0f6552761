#!/usr/bin/env bash
# gRPC Check over TCP against the same over the Unix domain socket (`listen.grpc_unix`, what
# Envoy's `pipe` address connects to): one demo server, the two measured alternately in one run
# (docs/benchmarks.md, issue 13).
# Usage: scripts/bench-unix.sh [ROUNDS] [DURATION]   (default 3 rounds of 10s each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-10s}
cargo build --release --bins >&2
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
g=$(free_port)
h=$(free_port)
sed -e "s|127.0.0.1:50051|127.0.0.1:$g|" -e "s|  http: 127.0.0.1:8080|  http: 127.0.0.1:$h\n  grpc_unix: $work/grpc.sock|" \
  config/demo.yaml >"$work/demo.yaml"
echo "decision_log: { to: off }" >>"$work/demo.yaml"
./target/release/cedargate --config "$work/demo.yaml" 2>"$work/server.log" &
server=$!
pids+=("$server")
until curl -sf "http://127.0.0.1:$h/readyz" >/dev/null; do sleep 0.2; done

echo "| round | transport | throughput | p50 ms | p99 ms | server CPU µs/check |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for transport in tcp unix; do
    addr="http://127.0.0.1:$g"
    [ "$transport" = unix ] && addr="unix:$work/grpc.sock"
    before=$(cpu_ticks "$server")
    load --addr "$addr" --concurrency 32 --duration "$duration" --warmup 2s
    cpu=$(($(cpu_ticks "$server") - before))
    [ "$errors" = 0 ] || { echo "$transport: $errors errors" >&2; exit 1; }
    per_check=$(per_request "$cpu" "$requests")
    echo "| $round | $transport | $throughput | $p50 | $p99 | $per_check |"
  done
done
echo "steal: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"
