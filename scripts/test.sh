#!/usr/bin/env bash
# Runs the whole test suite: unit tests, scenario tests against real servers and the real
# binary, and one pass of every benchmark as a smoke test. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
# One pass of every benchmark, as a smoke test (criterion's test mode), then every test.
cargo test --locked --bench '*' "$@"
cargo test --locked --lib --bins --tests "$@"
