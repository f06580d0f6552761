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
work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
g=$(free_port)
h=$(free_port)
sed -e "s|127.0.0.1:50051|127.0.0.1:$g|" -e "s|  http: 127.0.0.1:8080|  http: 127.0.0.1:$h\n  grpc_unix: $work/grpc.sock|" \
  config/demo.yaml >"$work/demo.yaml"
echo "decision_log: { to: off }" >>"$work/demo.yaml"
./target/release/cedargate --config "$work/demo.yaml" 2>"$work/server.log" &
server=$!
until curl -sf "http://127.0.0.1:$h/readyz" >/dev/null; do sleep 0.2; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)
echo "| round | transport | throughput | p50 ms | p99 ms | server CPU µs/check |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for transport in tcp unix; do
    addr="http://127.0.0.1:$g"
    [ "$transport" = unix ] && addr="unix:$work/grpc.sock"
    before=$(cpu_ticks "$server")
    out=$(./target/release/cedargate-load --addr "$addr" --concurrency 32 --duration "$duration" --warmup 2s)
    cpu=$(($(cpu_ticks "$server") - before))
    requests=$(sed -n 's/^requests: \([0-9]*\).*/\1/p' <<<"$out")
    errors=$(sed -n 's/.*errors \([0-9]*\)).*/\1/p' <<<"$out")
    [ "$errors" = 0 ] || { echo "$transport: $errors errors" >&2; exit 1; }
    throughput=$(sed -n 's/^throughput: \([0-9]*\) req\/s/\1/p' <<<"$out")
    p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/.*p99 \([0-9.]*\) .*/\1/p' <<<"$out")
    per_check=$(awk -v t="$cpu" -v hz="$ticks" -v n="$requests" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    echo "| $round | $transport | $throughput | $p50 | $p99 | $per_check |"
  done
done
echo "steal: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"
