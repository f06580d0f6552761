#!/usr/bin/env bash
# Memory of the token cache (docs/benchmarks.md, issue 13, part 5), on release servers:
#  (a) RSS with SUBJECTS cached JWTs of distinct subjects within `token_cache.max_entries`
#      (= SUBJECTS), and the bytes per entry; then the same SUBJECTS tokens against a server
#      bounded at BOUND entries, whose RSS stays at what BOUND entries cost.
#  (b) a mixed load for DURATION (static token, API key and JWTs of 2 x BOUND subjects in turn,
#      so the JWT third is a first sight each time and the cache evicts all along), with RSS
#      and the cache's entries sampled every 10 s.
# JWTs: ES256, minted by cedargate-load with tests/fixtures/keys/ec256.pem; claims iss, aud,
# sub (load-user-<n>), client_id, scope, roles [user], iat, exp, jti (see --jwt-* there).
# RSS is the server's VmRSS from /proc (VmHWM is the peak); entries are
# `cedargate_token_cache_entries` from its /metrics; the 10 s samples start at the first entry
# (minting the tokens comes before). Each part has its own server, one at a time; PARTS picks
# some of them (two runs side by side measure the same RSS, only slower).
# Usage: [PARTS="fill bounded mixed"] scripts/bench-memory.sh [DURATION] [SUBJECTS] [BOUND]
#   (default 10m 1000000 100000); run it under `nice -n 19` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10m}
subjects=${2:-1000000}
bound=${3:-100000}
parts=${PARTS:-fill bounded mixed}
target_dir=${CARGO_TARGET_DIR:-./target}
cargo build --release --bins >&2
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

key=tests/fixtures/keys/ec256.pem
issuer=https://issuer.bench
audience=https://api.bench
jwks=$("$target_dir/release/cedargate-load" --jwt-key "$key" --jwt-kid k1 --jwt-print-jwks)
jwt_args=(--jwt-key "$key" --jwt-kid k1 --jwt-issuer "$issuer" --jwt-audience "$audience" --jwt-ttl 3h)
static="Bearer user-token-123"
api_key="ApiKey api-key-789"

echo "command: PARTS=\"$parts\" $0 $duration $subjects $bound"
echo "machine: $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr), niceness $(nice)"
echo "steal before: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"

kib() { awk -v field="$2:" '$1 == field {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
entries() {
  curl -sf "http://127.0.0.1:$http/metrics" | awk '/^cedargate_token_cache_entries[ {]/ {print $NF; found=1} END {if (!found) print 0}'
}

# Starts a server whose token cache holds at most $1 entries; sets server, grpc, http.
start() {
  grpc=$(free_port)
  http=$(free_port)
  cat >"$work/cedargate.yaml" <<YAML
listen: { grpc: "127.0.0.1:$grpc", http: "127.0.0.1:$http" }
policies: { dir: "$PWD/policies", watch: false }
credentials:
  static_tokens:
    # Bearer user-token-123
    - { sha256: 420d40c543017845583490814854cccf7da250a34643507af18f3e8a6feba7a5, subject: bench-static, roles: [user] }
  api_keys:
    # ApiKey api-key-789
    - { sha256: 915be12e3bdc387472b2797a3330ee150ae6b7fdaef04e93fc20ca3e424d6133, subject: bench-key, roles: [user] }
  jwt:
    - issuer: $issuer
      audiences: [$audience]
      algorithms: [ES256]
      jwks: $jwks
  token_cache: { max_ttl: 3h, max_entries: $1 }
decision_log: { to: off }
YAML
  "$target_dir/release/cedargate" --config "$work/cedargate.yaml" 2>"$work/server.log" &
  server=$!
  pids+=("$server")
  until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.2; done
}

stop() {
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=
}

# Prints `| elapsed s | RSS MiB | peak MiB | entries |` rows every 10 s from the first cache entry
# on, until killed.
sample() {
  until [ "$(entries)" != 0 ]; do sleep 0.2; done
  local started=$SECONDS
  while sleep 10; do
    echo "| $((SECONDS - started)) | $(mb "$(kib "$server" VmRSS)") | $(mb "$(kib "$server" VmHWM)") | $(entries) |"
  done
}

# The baseline: connections made and the static-token path warm, nothing in the token cache.
warm() {
  load --addr "http://127.0.0.1:$grpc" --authorization "$static" --duration 3s --warmup 0s
  sleep 2
  rss0=$(kib "$server" VmRSS)
  hwm0=$(kib "$server" VmHWM)
  echo "baseline: RSS $(mb "$rss0") MiB (peak $(mb "$hwm0") MiB), entries $(entries)"
}

# $subjects JWTs of distinct subjects, each sent once (a cache miss each); RSS sampled alongside.
fill() {
  echo "| elapsed s | RSS MiB | peak MiB | entries |"
  echo "|---|---|---|---|"
  sample &
  sampler=$!
  pids+=("$sampler")
  load --addr "http://127.0.0.1:$grpc" "${jwt_args[@]}" --jwt-subjects "$subjects" \
    --requests "$subjects" --warmup 0s --concurrency 32
  kill "$sampler"
  wait "$sampler" 2>/dev/null || true
  sampler=
  [ "$errors" = 0 ] && [ "$allowed" = "$requests" ] || { echo "not every check was allowed: $out" >&2; exit 1; }
  sleep 2
  rss1=$(kib "$server" VmRSS)
  hwm1=$(kib "$server" VmHWM)
  held=$(entries)
  grep '^minted' <<<"$out"
  echo "checks: $requests at $throughput/s, p50 $p50 ms, p99 $p99 ms"
  echo "after: RSS $(mb "$rss1") MiB (peak $(mb "$hwm1") MiB), entries $held"
  echo "growth: $(mb $((rss1 - rss0))) MiB; per entry: $(awk -v d=$((rss1 - rss0)) -v n="$held" 'BEGIN { printf "%.0f", (n > 0 ? d * 1024 / n : 0) }') bytes"
}

if [[ " $parts " == *" fill "* ]]; then
  echo
  echo "## (a) $subjects distinct JWTs, token_cache.max_entries $subjects"
  start "$subjects"
  warm
  fill
  stop
fi

if [[ " $parts " == *" bounded "* ]]; then
  echo
  echo "## (a') the same $subjects distinct JWTs, token_cache.max_entries $bound"
  start "$bound"
  warm
  fill
  stop
fi

[[ " $parts " == *" mixed "* ]] || { echo "steal after: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"; exit 0; }
echo
echo "## (b) mixed load for $duration: static token, API key, JWTs of $((2 * bound)) subjects in turn; max_entries $bound"
start "$bound"
warm
echo "| elapsed s | RSS MiB | peak MiB | entries |"
echo "|---|---|---|---|"
echo "| before | $(mb "$(kib "$server" VmRSS)") | $(mb "$(kib "$server" VmHWM)") | $(entries) |"
sample &
sampler=$!
pids+=("$sampler")
load --addr "http://127.0.0.1:$grpc" --authorization "$static" --authorization "$api_key" \
  "${jwt_args[@]}" --jwt-subjects $((2 * bound)) --duration "$duration" --warmup 0s --concurrency 32
kill "$sampler"
wait "$sampler" 2>/dev/null || true
sampler=
[ "$errors" = 0 ] && [ "$allowed" = "$requests" ] || { echo "not every check was allowed: $out" >&2; exit 1; }
echo "checks: $requests at $throughput/s, p50 $p50 ms, p99 $p99 ms"
echo "end: RSS $(mb "$(kib "$server" VmRSS)") MiB (peak $(mb "$(kib "$server" VmHWM)") MiB), entries $(entries)"
stop
echo "steal after: $(awk '/^cpu / {print "steal jiffies " $9}' /proc/stat)"
