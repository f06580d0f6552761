#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: safe to run on every test run.
# Today the suite needs only the Rust toolchain with rustfmt and clippy; installed tools that
# later suites need (Envoy, an OAuth server, ...) go under .tools/, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-test-deps: cargo is missing; install Rust with rustup first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
      rustup component add "${component}"
    fi
  done
fi
mkdir -p .tools
