#!/usr/bin/env bash
# The Envoy walkthrough on this machine, in one command: cedargate on
# examples/envoy/cedargate.yaml, Envoy (.tools/bin/envoy) on examples/envoy/envoy.yaml, the
# sample API the example routes to (examples/envoy/api.mjs) and the real MCP server the tests use
# (tests/mcp/server.mjs, the official SDK). Each runs in the background with its log in a
# temporary directory. The script prints the commands to try, each followed by the result it
# should give, then waits; Ctrl-C (or SIGTERM) stops everything and removes the directory.
#
# What runs is the shipped example files: the copies differ only in their ports (the settings
# below; the defaults are the example's own) and in Envoy's listener, which binds 127.0.0.1
# instead of 0.0.0.0 so a demo on a laptop is not reachable from the network.
#
# Settings, from the environment:
#   ENVOY_PORT=10000            where clients talk to Envoy
#   ENVOY_ADMIN_PORT=9901       Envoy's admin API
#   CEDARGATE_GRPC_PORT=50051   cedargate's gRPC port (Envoy's ext_authz calls it)
#   CEDARGATE_HTTP_PORT=8080    cedargate's HTTP port (login, RFC 9728 metadata)
#   API_PORT=3000               the sample API
#   MCP_PORT=3001               the MCP server
#   CEDARGATE_BIN               the cedargate binary to run; default: `cargo build --release`'s
# Exit status: 0 when stopped by Ctrl-C or SIGTERM; 1 when something did not start or stopped on
# its own (its log's tail is printed).
# tests/walkthrough.rs runs this script and every command it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ENVOY_PORT=${ENVOY_PORT:-10000}
ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-9901}
CEDARGATE_GRPC_PORT=${CEDARGATE_GRPC_PORT:-50051}
CEDARGATE_HTTP_PORT=${CEDARGATE_HTTP_PORT:-8080}
API_PORT=${API_PORT:-3000}
MCP_PORT=${MCP_PORT:-3001}
# Seconds each part may take to come up, and to stop before it gets SIGKILL.
startup_timeout=60
stop_timeout=10
# tests/walkthrough.rs waits for this line; keep it as it is.
ready_marker='Ready. Ctrl-C stops everything.'

fail() {
  echo "envoy-demo: $*" >&2
  exit 1
}

# Ports: numbers, all different, and free (something already answering there would be mistaken
# for a part of the demo).
port_names=(ENVOY_PORT ENVOY_ADMIN_PORT CEDARGATE_GRPC_PORT CEDARGATE_HTTP_PORT API_PORT MCP_PORT)
declare -A port_owner=()
for name in "${port_names[@]}"; do
  port=${!name}
  [[ $port =~ ^[1-9][0-9]{0,4}$ ]] && ((port <= 65535)) || fail "${name}=${port} is not a port number"
  [[ -z ${port_owner[$port]:-} ]] || fail "${name} and ${port_owner[$port]} are both ${port}"
  port_owner[$port]=$name
  if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    fail "port ${port} (${name}) is in use; stop what listens there or set ${name}=<another port>"
  fi
done
command -v curl >/dev/null 2>&1 || fail "curl is missing (the demo's checks and commands use it)"

# Envoy 1.40 into .tools/bin/envoy and the MCP SDK with tests/mcp/*.mjs into .tools/mcp; a no-op
# when they are there already.
./scripts/install-test-deps.sh

if [[ -n ${CEDARGATE_BIN:-} ]]; then
  cedargate=$CEDARGATE_BIN
else
  cargo build --release --bin cedargate
  cedargate=${CARGO_TARGET_DIR:-target}/release/cedargate
fi
[[ -x $cedargate ]] || fail "${cedargate} is not an executable cedargate binary"

dir=$(mktemp -d "${TMPDIR:-/tmp}/cedargate-demo.XXXXXX")

# The children: name, pid and log of each, in start order.
names=()
pids=()
logs=()

# On any exit: SIGTERM to every child still running, at most $stop_timeout seconds for them to
# stop, SIGKILL for the rest, then the temporary directory goes. Children started with `&` by a
# non-interactive shell ignore SIGINT, so a Ctrl-C reaches them only through here.
cleanup() {
  local status=$? pid alive
  # A second Ctrl-C must not cut the clean-up short; it is bounded anyway.
  trap '' INT TERM
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + stop_timeout))
  while :; do
    alive=()
    for pid in ${pids[@]+"${pids[@]}"}; do
      # bash reaps its children as they exit, so an exited child no longer answers kill -0.
      if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
    done
    ((${#alive[@]})) || break
    if ((SECONDS >= deadline)); then
      echo "envoy-demo: still running after ${stop_timeout}s, killed: ${alive[*]}" >&2
      kill -KILL "${alive[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "Stopping."; exit 0' INT TERM

# start <name> <command>...: runs the command in the background, output to <dir>/<name>.log.
start() {
  local name=$1
  shift
  "$@" </dev/null >"$dir/$name.log" 2>&1 &
  names+=("$name")
  pids+=("$!")
  logs+=("$dir/$name.log")
}

# died <index> <what happened>: reports a child that failed, with its log's tail, and exits 1
# (the EXIT trap stops the others).
died() {
  local i=$1
  echo "envoy-demo: ${names[i]} $2; the end of ${logs[i]}:" >&2
  tail -n 30 "${logs[i]}" | sed 's/^/  | /' >&2
  exit 1
}

# check_children: dies for the first child that is no longer running.
check_children() {
  local i status
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      status=0
      wait "${pids[i]}" 2>/dev/null || status=$?
      died "$i" "stopped (exit status ${status})"
    fi
  done
}

# wait_until <what> <probe>...: polls the probe command until it succeeds; dies for the newest
# child when any child stops first or after $startup_timeout seconds.
wait_until() {
  local what=$1
  shift
  local deadline=$((SECONDS + startup_timeout))
  until "$@"; do
    check_children
    ((SECONDS < deadline)) || died $((${#pids[@]} - 1)) "did not reach ${what} within ${startup_timeout}s"
    sleep 0.2
  done
}

# The HTTP status at a URL, 000 when nothing answers. Never through a proxy: all is on loopback.
http_status() {
  curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true
}
answers() { [[ $(http_status "$1") != 000 ]]; }
answers_200() { [[ $(http_status "$1") == 200 ]]; }
envoy_live() { [[ $(curl --noproxy '*' -s --max-time 2 "$1" || true) == LIVE ]]; }

# render <example> <copy> <from> <to> [<from> <to>]...: writes the example with each exact text
# <from> replaced by <to>, and fails unless every <from> occurs exactly once in the example, so a
# change to the example cannot leave a default port behind. Each <from> first becomes a
# placeholder, so a new port that equals another default is not replaced again.
render() {
  local example=$1 copy=$2 text count i=0
  shift 2
  text=$(<"$example")
  local -a targets=()
  while (($#)); do
    local rest=${text//"$1"/}
    count=$(((${#text} - ${#rest}) / ${#1}))
    ((count == 1)) || fail "${example} holds \`$1\` ${count} times, not once: update scripts/envoy-demo.sh"
    text=${text//"$1"/"@@${i}@@"}
    targets+=("$2")
    i=$((i + 1))
    shift 2
  done
  for i in "${!targets[@]}"; do
    text=${text//"@@${i}@@"/"${targets[i]}"}
  done
  printf '# Rendered by scripts/envoy-demo.sh from %s: only ports (and the listen address) differ.\n%s\n' \
    "$example" "$text" >"$copy"
}

render examples/envoy/envoy.yaml "$dir/envoy.yaml" \
  "{ address: 127.0.0.1, port_value: 9901 }" "{ address: 127.0.0.1, port_value: ${ENVOY_ADMIN_PORT} }" \
  "{ address: 0.0.0.0, port_value: 10000 }" "{ address: 127.0.0.1, port_value: ${ENVOY_PORT} }" \
  "port_value: 50051 }" "port_value: ${CEDARGATE_GRPC_PORT} }" \
  "port_value: 8080 }" "port_value: ${CEDARGATE_HTTP_PORT} }" \
  "port_value: 3000 }" "port_value: ${API_PORT} }" \
  "port_value: 3001 }" "port_value: ${MCP_PORT} }"
# cedargate resolves a relative `policies.dir` against its config file's directory, which is the
# temporary one here. The example has none (it runs the embedded demo policies, policies/*.cedar);
# should it gain one, this copy would look in the wrong place, so refuse rather than guess.
if grep -Eq '^policies:' examples/envoy/cedargate.yaml; then
  fail "examples/envoy/cedargate.yaml now sets policies:; make its dir absolute in the copy here"
fi
render examples/envoy/cedargate.yaml "$dir/cedargate.yaml" \
  $'grpc: 127.0.0.1:50051\n' $'grpc: 127.0.0.1:'"${CEDARGATE_GRPC_PORT}"$'\n' \
  $'http: 127.0.0.1:8080\n' $'http: 127.0.0.1:'"${CEDARGATE_HTTP_PORT}"$'\n' \
  "http://localhost:10000/" "http://localhost:${ENVOY_PORT}/"

start cedargate "$cedargate" --config "$dir/cedargate.yaml"
wait_until "GET /readyz" answers_200 "http://127.0.0.1:${CEDARGATE_HTTP_PORT}/readyz"
start api node examples/envoy/api.mjs "$API_PORT"
wait_until "an answer on port ${API_PORT}" answers "http://127.0.0.1:${API_PORT}/"
start mcp node .tools/mcp/server.mjs "$MCP_PORT"
wait_until "an answer on port ${MCP_PORT}" answers "http://127.0.0.1:${MCP_PORT}/mcp"
# No hot restart: it needs shared memory and a socket per --base-id, which a second Envoy on this
# machine (the test suite's, say) could collide with, and the demo never restarts in place.
start envoy .tools/bin/envoy -c "$dir/envoy.yaml" --disable-hot-restart --log-level warn
wait_until "LIVE on its admin /ready" envoy_live "http://127.0.0.1:${ENVOY_ADMIN_PORT}/ready"
wait_until "an answer on port ${ENVOY_PORT}" answers "http://127.0.0.1:${ENVOY_PORT}/public/info"

envoy=http://127.0.0.1:${ENVOY_PORT}
metadata=http://localhost:${ENVOY_PORT}/.well-known/oauth-protected-resource/mcp
user="-H 'Authorization: Bearer user-token-123'"
# try <command> <expected>: one line to copy, then what it should give after `  # `.
try() { printf '%s  # %s\n' "$1" "$2"; }

cat <<EOF

cedargate behind Envoy, with an API and an MCP server behind it (logs in ${dir}):
  envoy      ${envoy} (admin 127.0.0.1:${ENVOY_ADMIN_PORT})  examples/envoy/envoy.yaml
  cedargate  gRPC 127.0.0.1:${CEDARGATE_GRPC_PORT}, HTTP 127.0.0.1:${CEDARGATE_HTTP_PORT}  examples/envoy/cedargate.yaml
  api        127.0.0.1:${API_PORT}  examples/envoy/api.mjs
  mcp        127.0.0.1:${MCP_PORT}/mcp  tests/mcp/server.mjs
Credentials: Bearer user-token-123 (role user), Bearer admin-token-456 (admin),
ApiKey api-key-789 (service); policies: policies/routes.cedar and policies/mcp.cedar.

Try these from ${root}; after each, what it should give:
# Without a credential: a public route, then a 401 whose challenge names the RFC 9728 metadata.
EOF
try "curl -si ${envoy}/public/info" \
  '200 {"path":"/public/info","identity":{},"authorization_present":false}'
try "curl -si ${envoy}/user/profile" \
  "401 WWW-Authenticate: Bearer realm=\"cedargate\", resource_metadata=\"${metadata}\""
try "curl -si ${metadata}" "200 {\"resource\":\"http://localhost:${ENVOY_PORT}/mcp\"}"
echo "# As a user: the API sees the identity cedargate set and never the token; admin routes are 403."
try "curl -si ${user} ${envoy}/user/profile" \
  '200 {"identity":{"x-auth-subject":"demo-user","x-auth-roles":"user"},"authorization_present":false}'
try "curl -si ${user} ${envoy}/admin/users" '403 {"error":"forbidden","reason":"Requires admin role"}'
echo "# MCP on the wire: a JSON-RPC tools/call, decided per tool by cedargate, answered by the server."
try "curl -si ${user} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' ${envoy}/mcp -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hello\"}}}'" \
  '200 {"result":{"content":[{"type":"text","text":"hello"}]}}'
echo "# A real MCP client (the official SDK): users may call echo and whoami, not delete_file."
try "node .tools/mcp/client.mjs ${user} ${envoy}/mcp whoami" \
  'exit 0 {"headers":{"x-auth-subject":"demo-user","x-auth-roles":"user"},"authorization_present":false}'
try "node .tools/mcp/client.mjs ${user} ${envoy}/mcp delete_file '{\"path\":\"/docs/a\"}'" \
  'exit 1 refused: HTTP 403: no policy permits this request'
echo
echo "$ready_marker"

# Lives until a signal (the trap above exits 0) or until a child stops on its own.
while :; do
  wait -n || true
  check_children
done
