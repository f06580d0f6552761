#!/usr/bin/env bash
# Decision cost against policy count (docs/benchmarks.md, issue 13): gRPC Check throughput of
# servers holding 20, 200, 2,000 and 20,000 policies, plus 2,000 with slicing off, measured
# alternately in one run, then the reload time of the 20,000 set.
# The policies are per-tool role grants plus argument forbids: for tool i,
#   permit (principal in Role::"role<i mod 10>", action == Action::"call", resource == Tool::"tool<i>");
#   forbid (principal, action == Action::"call", resource == Tool::"tool<i>")
#     when { resource.hasTag("path") && resource.getTag("path") like "/etc/*" };
# One caller (a static token with role0) calls one tool (tool0), which it may call.
# Usage: scripts/bench-policies.sh [ROUNDS] [DURATION]   (default 3 rounds of 10s each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-10s}
cargo build --release --bins >&2
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
token=bench-token-0
digest=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)

policies() { # count, dir
  mkdir -p "$2"
  cp policies/schema.cedarschema "$2/"
  python3 - "$1" "$2/tools.cedar" <<'PY'
import sys
count, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as out:
    for i in range(count // 2):
        out.write(f'@id("grant-{i}")\npermit (principal in Role::"role{i % 10}", action == Action::"call", resource == Tool::"tool{i}");\n')
        out.write(f'@id("no-etc-{i}")\nforbid (principal, action == Action::"call", resource == Tool::"tool{i}")\n'
                  f'when {{ resource.hasTag("path") && resource.getTag("path") like "/etc/*" }};\n')
PY
}

declare -A grpc http pid
start() { # name, policy count, slice cache bound
  local name=$1 g h
  g=$(free_port)
  h=$(free_port)
  policies "$2" "$work/$name"
  cat >"$work/$name.yaml" <<YAML
listen: { grpc: "127.0.0.1:$g", http: "127.0.0.1:$h" }
policies: { dir: "$work/$name", watch: false, slice_cache_max_policies: $3 }
credentials:
  static_tokens:
    - { sha256: $digest, subject: bench, roles: [role0] }
decision_log: { to: off }
YAML
  ./target/release/cedargate --config "$work/$name.yaml" 2>"$work/$name.log" &
  pids+=($!)
  pid[$name]=$!
  grpc[$name]=$g
  http[$name]=$h
}
names=(p20 p200 p2000 p20000 p2000-unsliced)
start p20 20 100000
start p200 200 100000
start p2000 2000 100000
start p20000 20000 100000
start p2000-unsliced 2000 0
for name in "${names[@]}"; do
  until curl -sf "http://127.0.0.1:${http[$name]}/readyz" >/dev/null; do sleep 0.2; done
done

echo "| round | server | throughput | p50 ms | p99 ms | server CPU µs/check |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    before=$(cpu_ticks "${pid[$name]}")
    load --addr "http://127.0.0.1:${grpc[$name]}" --concurrency 32 \
      --authorization "Bearer $token" --tool tool0 --duration "$duration" --warmup 2s
    cpu=$(($(cpu_ticks "${pid[$name]}") - before))
    [ "$allowed" = "$requests" ] || { echo "$name: not every check was allowed: $out" >&2; exit 1; }
    per_check=$(per_request "$cpu" "$requests")
    echo "| $round | $name | $throughput | $p50 | $p99 | $per_check |"
  done
done

# Reload of the 20,000 set: a changed file, SIGHUP, and the reload's own measure of itself.
for attempt in 1 2 3; do
  echo "// reload $attempt" >>"$work/p20000/tools.cedar"
  kill -HUP "${pid[p20000]}"
  until [ "$(grep -c 'policies reloaded' "$work/p20000.log")" -ge "$attempt" ]; do sleep 0.2; done
  echo "reload of 20,000 policies: $(grep 'policies reloaded' "$work/p20000.log" | tail -1 | sed -n 's/.*took_ms=\([0-9]*\).*/\1/p') ms"
done
echo "RSS: $(for name in "${names[@]}"; do printf '%s %s MB, ' "$name" $(($(awk '/VmRSS/ {print $2}' "/proc/${pid[$name]}/status") / 1024)); done)"
echo "steal: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"
