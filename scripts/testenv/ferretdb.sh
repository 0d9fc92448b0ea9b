#!/usr/bin/env bash
# FerretDB v1 (MongoDB wire protocol, SQLite backend) built from its Go module
# source, for the test suite.
#
#   scripts/testenv/ferretdb.sh install|start|stop|restart|status|url|logs
#
# Needs: go >= 1.24 (GOTOOLCHAIN=local), python3 (readiness probe), flock/setsid.
# Everything Go downloads or compiles stays under the cache dir (GOMODCACHE, GOCACHE).
# Env: AOS_TEST_MONGODB_PORT (27017), AOS_TEST_FERRETDB_VERSION (v1.24.2),
#      AOS_TEST_FERRETDB_START_TIMEOUT (60 s), AOS_TEST_FERRETDB_LOG_LEVEL (INFO),
#      AOS_TESTENV_STATE, XDG_STATE_HOME, XDG_CACHE_HOME.
set -euo pipefail

NAME=ferretdb
MODULE=github.com/FerretDB/FerretDB
VERSION=${AOS_TEST_FERRETDB_VERSION:-v1.24.2}
HOST=127.0.0.1
PORT=${AOS_TEST_MONGODB_PORT:-27017}
START_TIMEOUT=${AOS_TEST_FERRETDB_START_TIMEOUT:-60}

STATE_DIR=${AOS_TESTENV_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/aos-testenv}/$NAME
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/aos-testenv/$NAME
BIN=$CACHE_DIR/bin/ferretdb-$VERSION
DATA_DIR=$STATE_DIR/data
LOG_FILE=$STATE_DIR/server.log
PID_FILE=$STATE_DIR/server.pid

log() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

with_lock() { # with_lock LOCKFILE CMD...
    local lock=$1; shift
    mkdir -p "$(dirname "$lock")"
    if command -v flock >/dev/null 2>&1; then
        (
            flock -w 900 9 || die "timed out waiting for lock $lock"
            "$@"
        ) 9>"$lock"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------- install

go_env() {
    export GOMODCACHE=$CACHE_DIR/gomod
    export GOCACHE=$CACHE_DIR/gocache
    export GOPATH=$CACHE_DIR/gopath
    export GOTOOLCHAIN=local
    # sum.golang.org is not reachable from every machine; FerretDB's own go.sum
    # still pins every dependency, only the top-level module zip goes unchecked.
    export GOSUMDB=off
    export GOFLAGS="-mod=mod -buildvcs=false -modcacherw" # -modcacherw: cache stays deletable with rm -rf
    export GOWORK=off
    export CGO_ENABLED=0 # the sqlite backend is pure Go (modernc.org/sqlite)
}

ensure_tools() {
    command -v go >/dev/null 2>&1 || die "go not found in PATH (FerretDB $VERSION needs go >= 1.24)"
    command -v python3 >/dev/null 2>&1 || die "python3 not found (used by the readiness probe)"
    local v
    v=$(GOTOOLCHAIN=local go env GOVERSION) # e.g. go1.26.8
    v=${v#go}
    local major=${v%%.*} rest=${v#*.}
    local minor=${rest%%[.a-z]*}
    ((major > 1 || (major == 1 && minor >= 24))) || die "FerretDB $VERSION needs go >= 1.24, found go$v"
}

installed() { [[ -x $BIN ]] && "$BIN" --version >/dev/null 2>&1; }

do_install() {
    installed && return 0
    ensure_tools
    go_env
    local blog=$CACHE_DIR/install.log
    mkdir -p "$CACHE_DIR/bin"
    : >"$blog"
    log "building FerretDB $VERSION from the Go module source (first run takes ~2-4 min; log $blog)"
    local json dir attempt
    for attempt in 1 2 3; do
        if json=$(go mod download -json "$MODULE@$VERSION" 2>>"$blog"); then
            break
        fi
        ((attempt < 3)) || { tail -n 20 "$blog" >&2; die "go mod download $MODULE@$VERSION failed"; }
        sleep $((attempt * 5))
    done
    dir=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or ""); sys.exit(1 if d.get("Error") else 0)' <<<"$json") ||
        { echo "$json" >&2; die "go mod download reported an error"; }
    [[ -d $dir ]] || die "module dir $dir missing"

    # The module cache copy is read-only; build in a writable copy.
    local src=$CACHE_DIR/src-$VERSION.tmp.$$
    rm -rf "$src"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    # build/version is embedded; version.txt is required (the binary panics at
    # start without it), commit.txt/branch.txt are optional, package.txt is informational.
    printf '%s\n' "$VERSION" >"$src/build/version/version.txt"
    printf 'aos-testenv\n' >"$src/build/version/package.txt"

    local ok=0
    for attempt in 1 2 3; do
        if (cd "$src" && go build -trimpath -tags ferretdb_no_postgresql -o "$BIN.tmp" ./cmd/ferretdb) >>"$blog" 2>&1; then
            ok=1
            break
        fi
        log "go build attempt $attempt failed; last lines of $blog:"
        tail -n 20 "$blog" >&2
        sleep $((attempt * 5))
    done
    rm -rf "$src"
    ((ok)) || die "could not build FerretDB $VERSION"
    "$BIN.tmp" --version >>"$blog" 2>&1 || { tail -n 20 "$blog" >&2; die "built binary does not run"; }
    mv -f "$BIN.tmp" "$BIN"
    log "installed $BIN"
}

cmd_install() { with_lock "$CACHE_DIR.lock" do_install; }

# ---------------------------------------------------------------- process helpers

our_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--sqlite-url=file:$DATA_DIR/" || return 1
    echo "$pid"
}

# The running server must be the one for the configured port.
serves_our_port() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "--listen-addr=$HOST:$PORT "; }

kill_wait() { # SIGTERM, then SIGKILL after 15 s
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid still alive after 15 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# A real MongoDB command ({ping: 1} on admin) over the wire protocol (OP_MSG),
# with no driver needed.
probe() {
    python3 - "$HOST" "$PORT" <<'PY' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
def cstr(s): return s.encode() + b"\0"
body = b"\x10" + cstr("ping") + struct.pack("<i", 1) + b"\x02" + cstr("$db") + struct.pack("<i", 6) + cstr("admin")
doc = struct.pack("<i", len(body) + 5) + body + b"\0"
payload = struct.pack("<I", 0) + b"\0" + doc
msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload
with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(msg)
    buf = b""
    while len(buf) < 4 or len(buf) < struct.unpack("<i", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(1)
        buf += chunk
ok = b"\x01ok\x00" + struct.pack("<d", 1.0)
sys.exit(0 if ok in buf else 1)
PY
}

log_tail() { # log_tail N: the last N lines written since the latest start
    [[ -f $LOG_FILE ]] || return 0
    local from
    from=$(grep -n '^==== ' "$LOG_FILE" | tail -n 1 | cut -d: -f1)
    log "last lines of $LOG_FILE:"
    tail -n +"${from:-1}" "$LOG_FILE" | tail -n "$1" >&2
}

# ---------------------------------------------------------------- commands

cmd_status() {
    local pid
    if ! pid=$(our_pid); then
        log "not running"
        return 3
    fi
    if ! serves_our_port "$pid"; then
        log "pid $pid runs from $STATE_DIR but on another port than $PORT"
        return 1
    fi
    if ! probe; then
        log "process $pid is alive but does not answer on $HOST:$PORT"
        return 1
    fi
    log "serving on $HOST:$PORT (pid $pid)"
    return 0
}

do_start() {
    local pid
    if pid=$(our_pid); then
        serves_our_port "$pid" ||
            die "a server from $STATE_DIR (pid $pid) runs on another port than $PORT; run '$0 stop' first"
        if probe; then
            log "already running (pid $pid) on $HOST:$PORT"
            return 0
        fi
        log "process $pid is alive but not answering yet; waiting for it"
    else
        rm -f "$PID_FILE"
        port_open && die "port $HOST:$PORT is already in use by another process (set AOS_TEST_MONGODB_PORT)"
        mkdir -p "$DATA_DIR"
        log "starting FerretDB $VERSION on $HOST:$PORT (data in $DATA_DIR, log $LOG_FILE)"
        printf '\n==== %s start (port %s) ====\n' "$(date -Is)" "$PORT" >>"$LOG_FILE"
        (
            cd "$STATE_DIR"
            exec setsid nohup "$BIN" \
                --handler=sqlite \
                --sqlite-url="file:$DATA_DIR/" \
                --listen-addr="$HOST:$PORT" \
                --state-dir="$STATE_DIR" \
                --debug-addr=- \
                --telemetry=disable \
                --log-format=console \
                --log-level="${AOS_TEST_FERRETDB_LOG_LEVEL:-INFO}" \
                </dev/null >>"$LOG_FILE" 2>&1 9>&-
        ) &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi
    local start=$SECONDS
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            log_tail 40
            die "FerretDB exited during startup"
        fi
        if probe; then
            log "ready on $HOST:$PORT after $((SECONDS - start)) s (pid $pid)"
            return 0
        fi
        if ((SECONDS - start >= START_TIMEOUT)); then
            log_tail 40
            kill_wait "$pid"
            rm -f "$PID_FILE"
            die "FerretDB did not become ready within ${START_TIMEOUT} s"
        fi
        sleep 0.2
    done
}

cmd_start() {
    cmd_install
    with_lock "$STATE_DIR.lock" do_start
}

do_stop() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    local port
    port=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 's/.* --listen-addr=[^ ]*:\([0-9]*\) .*/\1/p')
    PORT=${port:-$PORT}
    log "stopping pid $pid (port $PORT)"
    kill_wait "$pid"
    rm -f "$PID_FILE"
    local i
    for ((i = 0; i < 50; i++)); do
        port_open || break
        sleep 0.1
    done
    port_open && log "WARNING: $HOST:$PORT still accepts connections (another process?)"
    log "stopped"
}

cmd_stop() { with_lock "$STATE_DIR.lock" do_stop; }

cmd_url() { echo "mongodb://$HOST:$PORT/"; }

usage() {
    echo "usage: $0 install|start|stop|restart|status|url|logs" >&2
    exit 2
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop && cmd_start ;;
status) cmd_status ;;
url) cmd_url ;;
logs) tail -n "${2:-100}" "$LOG_FILE" >&2 ;;
*) usage ;;
esac
