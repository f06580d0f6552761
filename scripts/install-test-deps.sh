#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: safe to run on every test run.
# The suite needs the Rust toolchain with rustfmt and clippy, and a real OAuth 2.0 server
# (oidc-provider, from the npm registry, run by Node.js). Installed tools live under .tools/,
# which git ignores.
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

# The OAuth server: reinstalled only when tests/oauth/package-lock.json changes.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
oauth=.tools/oauth
if ! cmp -s tests/oauth/package-lock.json "$oauth/package-lock.json" || [ ! -d "$oauth/node_modules/oidc-provider" ]; then
  rm -rf "$oauth"
  mkdir -p "$oauth"
  cp tests/oauth/package.json tests/oauth/package-lock.json "$oauth/"
  (cd "$oauth" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp tests/oauth/provider.mjs "$oauth/provider.mjs"
