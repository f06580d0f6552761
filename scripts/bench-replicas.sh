#!/usr/bin/env bash
# Session credentials checked against the memory store and against Redis (`state.redis`), with
# each replica's local copies warm (`local_cache.ttl: 1s`) and cold (`0s`: every check reads
# Redis), measured alternately in one run; then login throughput with Redis
# (docs/benchmarks.md, issue 15). A real redis-server from .tools (scripts/install-test-deps.sh).
# Usage: scripts/bench-replicas.sh [ROUNDS] [DURATION]   (default 2 rounds of 10s each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
duration=${2:-10s}
cargo build --release --locked --bins >&2
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

redis_port=$(free_port)
.tools/bin/redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" --daemonize no &
pids+=("$!")
until [ "$(.tools/bin/redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done

# serve NAME STATE_YAML: the demo on fresh ports with STATE_YAML appended; sets pid_NAME, grpc_NAME
# and http_NAME.
serve() {
  local g h
  g=$(free_port)
  h=$(free_port)
  sed -e "s|127.0.0.1:50051|127.0.0.1:$g|" -e "s|127.0.0.1:8080|127.0.0.1:$h|" config/demo.yaml >"$work/$1.yaml"
  printf 'decision_log: { to: off }\n%s\n' "$2" >>"$work/$1.yaml"
  ./target/release/cedargate --config "$work/$1.yaml" 2>"$work/$1.log" &
  pids+=("$!")
  printf -v "pid_$1" %s "$!"
  printf -v "grpc_$1" %s "$g"
  printf -v "http_$1" %s "$h"
  until curl -sf "http://127.0.0.1:$h/readyz" >/dev/null; do sleep 0.2; done
}
redis_state() {
  printf 'state:\n  redis:\n    url: redis://127.0.0.1:%s/\n    local_cache: { ttl: %s }\n' "$redis_port" "$1"
}
serve memory ""
serve warm "$(redis_state 1s)"
serve cold "$(redis_state 0s)"

# 20 sessions of a server, checked round-robin: sets `authorization` to cedargate-load's options.
sessions() {
  local token
  authorization=()
  for _ in $(seq 20); do
    token=$(curl -sf -H 'content-type: application/json' -d '{"username":"alice","password":"password123"}' \
      "http://127.0.0.1:$1/auth/login" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    authorization+=(--authorization "Bearer $token")
  done
}

echo "| round | store | throughput | p50 ms | p99 ms | server CPU µs/check |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for name in memory warm cold; do
    grpc_var="grpc_$name" http_var="http_$name" pid_var="pid_$name"
    sessions "${!http_var}"
    before=$(cpu_ticks "${!pid_var}")
    load --addr "http://127.0.0.1:${!grpc_var}" "${authorization[@]}" --concurrency 32 \
      --duration "$duration" --warmup 2s
    cpu=$(($(cpu_ticks "${!pid_var}") - before))
    [ "$errors" = 0 ] && [ "$allowed" = "$requests" ] || { printf '%s: %s errors\n%s\n' "$name" "$errors" "$out" >&2; exit 1; }
    echo "| $round | $name | $throughput | $p50 | $p99 | $(per_request "$cpu" "$requests") |"
  done
done

echo
echo "| logins | concurrency | throughput | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
# Four in flight: the password checks' own width, and within one username's budget (5): more
# logins of one user at once than the budget are refused with Redis (429, retry in 1 s), and
# the table would then count refusals, not logins.
for store in memory warm; do
  http_var="http_$store"
  load --http-url "http://127.0.0.1:${!http_var}/auth/login" --method POST \
    --header 'content-type: application/json' --body '{"username":"alice","password":"password123"}' \
    --concurrency 4 --duration "$duration" --warmup 2s
  [ "$errors" = 0 ] && [ "$allowed" = "$requests" ] || { printf 'login %s: %s errors\n%s\n' "$store" "$errors" "$out" >&2; exit 1; }
  echo "| $store | 4 | $throughput | $p50 | $p99 |"
done
echo "steal: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"
