# Shared by the scripts/bench-*.sh scripts: sourced, not run.

# A scratch directory, and the processes a script starts (it appends their pids to `pids`):
# both gone when the script exits, however it exits.
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A TCP port nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# User + system CPU time of process $1, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)
load_prefix=()

# µs of CPU per request: ticks $1 spent over $2 requests.
per_request() { awk -v t="$1" -v hz="$ticks" -v n="$2" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }'; }

# Runs cedargate-load (under "${load_prefix[@]}", e.g. taskset, when set; from
# "$target_dir/release" when target_dir is set, e.g. to $CARGO_TARGET_DIR, else ./target) with
# the arguments given and sets, from its report: requests, allowed, errors, throughput, p50,
# p99 (and out, the whole report).
load() {
  out=$("${load_prefix[@]}" "${target_dir:-./target}/release/cedargate-load" "$@")
  requests=$(sed -n 's/^requests: \([0-9]*\).*/\1/p' <<<"$out")
  allowed=$(sed -n 's/^requests: [0-9]* (allowed \([0-9]*\).*/\1/p' <<<"$out")
  errors=$(sed -n 's/.*errors \([0-9]*\)).*/\1/p' <<<"$out")
  throughput=$(sed -n 's/^throughput: \([0-9]*\) req\/s/\1/p' <<<"$out")
  p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*p99 \([0-9.]*\) .*/\1/p' <<<"$out")
}
