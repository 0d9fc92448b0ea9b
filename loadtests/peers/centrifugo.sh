#!/usr/bin/env bash
# Centrifugo v6 (built from the Go module proxy) as a benchmark peer:
#
#   loadtests/peers/centrifugo.sh install|start|stop|restart|status|url|env|logs
#
# Listens on 127.0.0.1:${AOS_BENCH_CENTRIFUGO_PORT:-8092}, memory engine, config generated
# from centrifugo/config.json.in into $STATE/centrifugo/config.json:
#   POST /api/publish                 server HTTP API, header `X-API-Key: <key>` (see `env`),
#                                     body {"channel": "bench:<id>", "data": <JSON>}
#   GET  /connection/uni_sse?cf_connect=<JSON>
#                                     unidirectional SSE; anonymous, no token:
#                                     cf_connect={"subs": {"bench:<id>": {}}} subscribes, and
#                                     {"subs": {"bench:<id>": {"recover": true, "offset": N,
#                                     "epoch": "E"}}} resumes after offset N (Centrifugo's
#                                     uni_sse has no Last-Event-ID; this is its equivalent).
#   GET  /health                      200 when up
# Channels of the `bench` namespace keep 1000 messages for 1h (history + recovery).
# `url` prints the base URL on stdout, `env` prints export lines; all else goes to stderr.
#
# Build: `go install github.com/centrifugal/centrifugo/v6@VERSION` with GOTOOLCHAIN=local
# and GOMODCACHE/GOCACHE/GOBIN under $XDG_CACHE_HOME/aos-testenv/centrifugo. When the
# module proxy refuses the version list that `go install pkg@version` asks for, the same
# module version is fetched with `go mod download` and built with `go build` in it.
#
# Env: AOS_BENCH_CENTRIFUGO_PORT (8092), AOS_BENCH_CENTRIFUGO_VERSION (v6.9.1),
#      AOS_BENCH_CENTRIFUGO_API_KEY (random, kept in the state dir),
#      AOS_BENCH_CENTRIFUGO_NAMESPACE (bench), AOS_BENCH_CENTRIFUGO_HISTORY_SIZE (1000),
#      AOS_BENCH_CENTRIFUGO_HISTORY_TTL (1h), AOS_BENCH_CENTRIFUGO_PING (15s),
#      AOS_BENCH_CENTRIFUGO_NOFILE (65536), AOS_BENCH_CENTRIFUGO_START_TIMEOUT (30 s),
#      AOS_TESTENV_STATE, XDG_STATE_HOME, XDG_CACHE_HOME.
set -euo pipefail
TESTENV_NAME=centrifugo
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
testenv="$(cd "$here/../../scripts/testenv" && pwd)"
. "$testenv/lib-sql.sh"

HOST=127.0.0.1
PORT="${AOS_BENCH_CENTRIFUGO_PORT:-8092}"
VERSION="${AOS_BENCH_CENTRIFUGO_VERSION:-v6.9.1}"
MODULE=github.com/centrifugal/centrifugo/v6
NAMESPACE="${AOS_BENCH_CENTRIFUGO_NAMESPACE:-bench}"
HISTORY_SIZE="${AOS_BENCH_CENTRIFUGO_HISTORY_SIZE:-1000}"
HISTORY_TTL="${AOS_BENCH_CENTRIFUGO_HISTORY_TTL:-1h}"
PING_INTERVAL="${AOS_BENCH_CENTRIFUGO_PING:-15s}"
WANT_NOFILE="${AOS_BENCH_CENTRIFUGO_NOFILE:-65536}"
START_TIMEOUT="${AOS_BENCH_CENTRIFUGO_START_TIMEOUT:-30}"

TEMPLATE="$here/centrifugo/config.json.in"
DIR="$TESTENV_STATE_ROOT/centrifugo"
CACHE="$TESTENV_CACHE_ROOT/centrifugo"
BINDIR="$CACHE/bin-$VERSION"
BIN="$BINDIR/centrifugo"
CONF="$DIR/config.json"
PIDFILE="$DIR/run/centrifugo.pid"
LOGFILE="$DIR/centrifugo.log"
KEYFILE="$DIR/api_key"

with_lock() { # with_lock LOCKFILE CMD...
  local lock=$1; shift
  mkdir -p "$(dirname "$lock")"
  if command -v flock >/dev/null 2>&1; then
    ( flock -w 900 9 || die "timed out waiting for $lock"; "$@" ) 9>"$lock"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- install

installed() { [ -x "$BIN" ] && [ "$(cat "$BINDIR/.complete" 2>/dev/null)" = "$VERSION" ]; }

go_env() {
  env GOTOOLCHAIN=local GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gobuild" GOBIN="$BINDIR" \
      GOPATH="$CACHE/gopath" CGO_ENABLED=0 "$@"
}

# The version string `centrifugo version` reports (release builds set it the same way).
LDFLAGS="-s -w -X $MODULE/internal/build.Version=${VERSION#v}"

build_once() { # build_once GOSUMDB-value; output in $CACHE/install.log
  local sumdb=$1 dir
  log "go install $MODULE@$VERSION (GOSUMDB=${sumdb:-default})"
  if go_env ${sumdb:+GOSUMDB=$sumdb} go install -trimpath -ldflags "$LDFLAGS" "$MODULE@$VERSION" \
       >>"$CACHE/install.log" 2>&1; then
    return 0
  fi
  # `go install pkg@version` also reads the module's version list (for deprecation
  # notices); a proxy that refuses that list (403) fails the install. Build the very
  # same module version from its downloaded source instead.
  log "go install failed ($(grep -m1 -o '[^ ]*: [0-9]\{3\} [A-Za-z ]*$' "$CACHE/install.log" || tail -n1 "$CACHE/install.log")); building from the downloaded module"
  dir="$(go_env ${sumdb:+GOSUMDB=$sumdb} go mod download -json "$MODULE@$VERSION" 2>>"$CACHE/install.log" \
           | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" || return 1
  [ -n "$dir" ] && [ -f "$dir/go.mod" ] || return 1
  ( cd "$dir" && go_env ${sumdb:+GOSUMDB=$sumdb} go build -mod=readonly -trimpath -ldflags "$LDFLAGS" \
      -o "$BIN" . ) >>"$CACHE/install.log" 2>&1
}

do_install() {
  installed && return 0
  command -v go >/dev/null 2>&1 || die "the go command is needed to build Centrifugo (Go >= 1.26, as its go.mod says)"
  mkdir -p "$CACHE" "$BINDIR"
  : >"$CACHE/install.log"
  log "building Centrifugo $VERSION into $BINDIR (first time: a few minutes, ~2 GB of module/build cache; log $CACHE/install.log)"
  local t0=$SECONDS
  if ! build_once ""; then
    if grep -q -i 'sum.golang.org\|verifying .*module\|SECURITY ERROR\|checksum database' "$CACHE/install.log"; then
      log "checksum database unreachable; retrying with GOSUMDB=off"
      build_once off || { tail -n 30 "$CACHE/install.log" >&2; die "building Centrifugo $VERSION failed"; }
    else
      tail -n 30 "$CACHE/install.log" >&2
      die "building Centrifugo $VERSION failed; see $CACHE/install.log"
    fi
  fi
  [ -x "$BIN" ] || die "no binary at $BIN after the build"
  echo "$VERSION" >"$BINDIR/.complete"
  log "built $("$BIN" version 2>&1 | head -n1) in $((SECONDS - t0))s"
}

cmd_install() { with_lock "$CACHE.lock" do_install; }

# ---------------------------------------------------------------- config

api_key() {
  if [ -n "${AOS_BENCH_CENTRIFUGO_API_KEY:-}" ]; then
    echo "$AOS_BENCH_CENTRIFUGO_API_KEY"
  elif [ -s "$KEYFILE" ]; then
    cat "$KEYFILE"
  else
    mkdir -p "$DIR"
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$KEYFILE.tmp"
    mv "$KEYFILE.tmp" "$KEYFILE"
    cat "$KEYFILE"
  fi
}

render_conf() { # render_conf OUT
  local key
  key="$(api_key)"
  [[ $key =~ ^[A-Za-z0-9._-]+$ ]] || die "AOS_BENCH_CENTRIFUGO_API_KEY may only hold [A-Za-z0-9._-]"
  printf '%s' "$key" >"$KEYFILE"
  sed -e "s|@PORT@|$PORT|g" -e "s|@STATE@|$DIR|g" -e "s|@API_KEY@|$key|g" \
      -e "s|@NAMESPACE@|$NAMESPACE|g" -e "s|@HISTORY_SIZE@|$HISTORY_SIZE|g" \
      -e "s|@HISTORY_TTL@|$HISTORY_TTL|g" -e "s|@PING_INTERVAL@|$PING_INTERVAL|g" \
      "$TEMPLATE" >"$1"
  ! grep -n '@[A-Z_]*@' "$1" >&2 || die "unrendered placeholder in $1"
}

check_conf() {
  "$BIN" checkconfig -c "$1" >"$DIR/checkconfig.log" 2>&1 \
    || { cat "$DIR/checkconfig.log" >&2; die "centrifugo rejects $1"; }
}

conf_port() { sed -n 's/^ *"port": \([0-9]*\).*/\1/p' "$1" 2>/dev/null | head -n1; }

# ---------------------------------------------------------------- process

our_pid() { head -n1 "$PIDFILE" 2>/dev/null || true; }
running() { pid_alive "$(our_pid)" centrifugo; }

# One HTTP/1.0 GET over bash's /dev/tcp; true if the status line says 200.
http_200() {
  # shellcheck disable=SC2016  # the inner script's own positional parameters
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$3" >&3
    IFS= read -r line <&3 || exit 1
    case "$line" in "HTTP/1."?" 200 "*) exit 0 ;; *) exit 1 ;; esac' _ "$HOST" "$PORT" "$1" 2>/dev/null
}

ready() { http_200 /health; }

log_tail() {
  [ -s "$LOGFILE" ] || return 0
  log "last lines of $LOGFILE:"
  tail -n 20 "$LOGFILE" >&2
}

do_start() {
  cmd_install
  mkdir -p "$DIR/run"
  local new="$DIR/config.new.json"  # checkconfig goes by the extension
  render_conf "$new"
  if running; then
    if cmp -s "$new" "$CONF"; then
      rm -f "$new"
      TESTENV_TIMEOUT=$START_TIMEOUT wait_for ready || { log_tail; die "centrifugo (pid $(our_pid)) runs but does not serve on $HOST:$PORT"; }
      log "already running: $(cmd_url) (pid $(our_pid))"
      return 0
    fi
    # Vet the new config (and a new port) before stopping the instance that works.
    check_conf "$new"
    [ "$(conf_port "$CONF")" = "$PORT" ] || ! port_open "$HOST" "$PORT" \
      || die "port $PORT is already in use by another process; set AOS_BENCH_CENTRIFUGO_PORT"
    # Centrifugo reloads nothing but its log level on SIGHUP: restart for a new config.
    log "config changed; restarting"
    do_stop
  fi
  check_conf "$new"
  mv "$new" "$CONF"
  port_open "$HOST" "$PORT" && die "port $PORT is already in use by another process (not our centrifugo); set AOS_BENCH_CENTRIFUGO_PORT"
  rm -f "$PIDFILE"
  log "starting centrifugo on $HOST:$PORT (config $CONF, log $LOGFILE)"
  printf '==== %s start\n' "$(date -u +%FT%TZ)" >>"$LOGFILE"
  # Own session, no stdin, not holding our lock fd 9; Go raises its soft fd limit to the hard one by itself, so lift
  # the hard limit where we may (root with CAP_SYS_RESOURCE).
  ( [ "$(id -u)" -ne 0 ] || ulimit -Hn "$WANT_NOFILE" 2>/dev/null || true
    cd "$DIR" && exec setsid "$BIN" -c "$CONF" </dev/null >>"$LOGFILE" 2>&1 9>&- ) &
  local deadline=$((SECONDS + START_TIMEOUT))
  until ready; do
    if [ "$SECONDS" -ge "$deadline" ]; then log_tail; die "centrifugo not serving on $HOST:$PORT within ${START_TIMEOUT}s; see $LOGFILE"; fi
    if [ -s "$PIDFILE" ] && ! running; then log_tail; die "centrifugo exited during start; see $LOGFILE"; fi
    sleep 0.2
  done
  TESTENV_TIMEOUT=5 wait_for running || { log_tail; die "centrifugo serves but wrote no live pid to $PIDFILE"; }
  log "centrifugo ready: $(cmd_url) (pid $(our_pid))"
}

do_stop() {
  running || { log "centrifugo not running"; rm -f "$PIDFILE"; return 0; }
  local pid i
  pid="$(our_pid)"
  log "stopping centrifugo (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  # Graceful shutdown closes the client connections; give it 10 s, then SIGKILL.
  for ((i = 0; i < 100; i++)); do
    pid_alive "$pid" centrifugo || break
    sleep 0.1
  done
  if pid_alive "$pid" centrifugo; then
    log "pid $pid still alive after 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$PIDFILE"
}

cmd_start() { with_lock "$DIR/.lock" do_start; }
cmd_stop() { with_lock "$DIR/.lock" do_stop; }
cmd_restart() { with_lock "$DIR/.lock" do_stop; with_lock "$DIR/.lock" do_start; }

cmd_status() {
  if ! running; then log "not running"; return 3; fi
  if ! ready; then log "centrifugo (pid $(our_pid)) is alive but does not serve on $HOST:$PORT"; return 1; fi
  log "serving on $HOST:$PORT (pid $(our_pid))"
}

cmd_url() { echo "http://$HOST:$PORT"; }

cmd_env() {
  local u key; u="$(cmd_url)"; key="$(api_key)"
  cat <<EOF
export AOS_BENCH_CENTRIFUGO_URL='$u'
export AOS_BENCH_CENTRIFUGO_API_KEY='$key'
export AOS_BENCH_CENTRIFUGO_PUBLISH_URL='$u/api/publish'
export AOS_BENCH_CENTRIFUGO_SUB_URL='$u/connection/uni_sse'
export AOS_BENCH_CENTRIFUGO_NAMESPACE='$NAMESPACE'
export AOS_BENCH_CENTRIFUGO_CHANNEL_PATTERN='$NAMESPACE:{channel}'
export AOS_BENCH_CENTRIFUGO_PIDFILE='$PIDFILE'
EOF
}

cmd_logs() { tail -n "${2:-50}" "$LOGFILE" >&2; }

case "${1:-}" in
  install|start|stop|restart|status|url|env|logs) "cmd_$1" "$@" ;;
  *) echo "usage: $0 install|start|stop|restart|status|url|env|logs" >&2; exit 2 ;;
esac
