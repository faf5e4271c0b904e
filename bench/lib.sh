#!/usr/bin/env bash
# Shared by bench/run and bench/profile (sourced; expects ROOT to be set): cleanup of
# every process started, tools, release builds, and the server helpers.

T0=$(date +%s)
log() { printf '[bench %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Cleanup: every process this script starts is recorded and stopped by PID.
PIDS=()
NGINX_CONF=""
PG_DB=""
PG_DB_TLS=""
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -INT "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "$NGINX_CONF" ] && [ -f "$(dirname "$NGINX_CONF")/nginx.pid" ]; then
    nginx -c "$NGINX_CONF" -s stop 2>/dev/null || true
  fi
  for db in ${PG_DB:-} ${PG_DB_TLS:-}; do
    psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Installs what is missing (Debian packages, the python-tuf venv, PostgreSQL) and builds the
# release binaries; sets PY, BENCH, RAMPART, AGENT.
setup() {
  log "tools"
  local as_root=() missing=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo -n); fi
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v hyperfine >/dev/null 2>&1 || missing+=(hyperfine)
  [ -x /usr/bin/time ] || missing+=(time)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get install -y -q "${missing[@]}" >&2 ||
      { "${as_root[@]}" apt-get update -q >&2 && "${as_root[@]}" apt-get install -y -q "${missing[@]}" >&2; } ||
      die "apt-get install ${missing[*]} failed"
  fi
  export PATH="$PATH:/usr/sbin"
  PY="$(./scripts/python-env)"
  ./scripts/postgres-up >/dev/null

  log "build (release)"
  # Each binary's path comes from cargo's own build messages (JSON), not from its text output.
  RAMPART="$(built_executable rampart --release --locked -p rampart-cli --bin rampart)"
  AGENT="$(built_executable rampart-agent --locked --profile release-agent -p rampart-vehicle --bin rampart-agent)"
  BENCH="$(built_executable rampart-bench --locked -p rampart-lab --bench rampart-bench --no-run)"
  for exe in "$RAMPART" "$AGENT" "$BENCH"; do
    [ -n "$exe" ] && [ -x "$exe" ] || die "could not find a built executable (got '$exe')"
  done
}

# Builds with cargo (arguments after the target's name; `--no-run` means `cargo bench`) and
# prints the path of the executable of target $1, read from cargo's JSON build messages.
built_executable() {
  local name="$1"
  shift
  local cmd=build
  for a in "$@"; do [ "$a" = "--no-run" ] && cmd=bench; done
  cargo "$cmd" "$@" --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
name = sys.argv[1]
exe = ""
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
        exe = m["executable"]
print(exe)' "$name"
}

# Starts `rampart serve` on plain HTTP (HTTPS with SERVER_TLS=1) for data dir $1 (extra args
# after), waits until it answers; sets SERVER_ADDR and records the PID.
start_server() {
  local dir="$1"
  shift
  local plain=(--danger-plain-http)
  [ "${SERVER_TLS:-0}" = 1 ] && plain=()
  "$RAMPART" serve --data-dir "$dir" "${plain[@]}" --listen 127.0.0.1:0 "$@" \
    >"$dir.out" 2>"$dir.err" &
  local pid=$!
  PIDS+=("$pid")
  SERVER_ADDR=""
  for _ in $(seq 1 200); do
    SERVER_ADDR="$(sed -n 's|^rampart serving on https\?://\([^/]*\)/.*|\1|p' "$dir.out")"
    [ -n "$SERVER_ADDR" ] && break
    kill -0 "$pid" 2>/dev/null || die "rampart serve exited: $(cat "$dir.err")"
    sleep 0.1
  done
  [ -n "$SERVER_ADDR" ] || die "rampart serve did not start"
  SERVER_PID=$pid
}

stop_server() {
  kill -INT "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# A server data directory (key ceremony) with the request limits lifted: the load generator is
# one client (one rate-limit bucket) speaking for thousands of vehicles. Plain HTTP, or HTTPS
# with client certificates with SERVER_TLS=1.
make_server_dir() {
  local dir="$1"
  rm -rf "$dir"
  local plain=(--danger-plain-http)
  [ "${SERVER_TLS:-0}" = 1 ] && plain=()
  "$RAMPART" repo init --data-dir "$dir" "${plain[@]}" --listen 127.0.0.1:0 >/dev/null
  sed -i -e 's/^requests_per_second = .*/requests_per_second = 1000000000.0/' \
    -e 's/^burst = .*/burst = 1000000000.0/' "$dir/rampart.toml"
  grep -q '^requests_per_second = 1000000000.0' "$dir/rampart.toml" ||
    die "could not lift the rate limit in $dir/rampart.toml"
}

