#!/usr/bin/env bash
# Instructions per decision of the in-process path (docs/benchmarks.md, issue 13): the
# criterion bench binary under valgrind's callgrind, then inclusive instructions per call of
# the pipeline's stages. Counts, unlike times, do not move with steal or a busy neighbour, so
# two builds compare on this noisy host: pass several bench binaries (copies of
# target/release/deps/decision-*) to measure them side by side.
#
# Usage: scripts/bench-instructions.sh [BENCH_BINARY...]   (default: builds and uses the current one)
set -euo pipefail
cd "$(dirname "$0")/.."

binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  cargo bench --bench decision --no-run >&2
  binaries=("$(ls -t target/release/deps/decision-* | grep -v '\.d$' | head -1)")
fi
stages='engine::Engine::check::\{\{closure\}\}$|engine::Engine::decide$|policy::PolicyEngine::evaluate$|policy::request::build$|policy::PolicyEngine::decide$|slice::Slicer::slice$|Authorizer::is_authorized_core$|entities::Entities::add_entities$|DecisionLog::write'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo); $(valgrind --version)"
for binary in "${binaries[@]}"; do
  for bench in 'check/static_token_allow' 'policy/evaluate_user_profile$'; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$binary" --bench --profile-time 2 "$bench" >/dev/null 2>&1
    echo "== $binary: $bench"
    python3 scripts/callgrind-per-call.py "$out/cg" "$stages"
  done
done
