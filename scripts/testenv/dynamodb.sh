#!/usr/bin/env bash
# DynamoDB Local (the real Amazon one, from Maven Central) for the test suite.
#
#   scripts/testenv/dynamodb.sh install|start|stop|restart|status|url|logs
#
# Needs: java >= 17, mvn, python3 (readiness probe), flock/setsid (util-linux).
# Data is kept on disk (-dbPath, -sharedDb) so it survives stop/start.
# Env: AOS_TEST_DYNAMODB_PORT (8000), AOS_TEST_DYNAMODB_VERSION (2.6.1),
#      AOS_TEST_DYNAMODB_JAVA_OPTS (-Xmx512m ...), AOS_TEST_DYNAMODB_START_TIMEOUT (120 s),
#      AOS_TESTENV_STATE, XDG_STATE_HOME, XDG_CACHE_HOME.
set -euo pipefail

NAME=dynamodb
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/dynamodb/pom.xml"

VERSION=${AOS_TEST_DYNAMODB_VERSION:-2.6.1}
HOST=127.0.0.1
PORT=${AOS_TEST_DYNAMODB_PORT:-8000}
REGION=us-east-1
START_TIMEOUT=${AOS_TEST_DYNAMODB_START_TIMEOUT:-120}
JAVA_OPTS=${AOS_TEST_DYNAMODB_JAVA_OPTS:--Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}

STATE_DIR=${AOS_TESTENV_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/aos-testenv}/$NAME
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/aos-testenv/$NAME
INSTALL_DIR=$CACHE_DIR/dist-$VERSION
LIB_DIR=$INSTALL_DIR/lib
DATA_DIR=$STATE_DIR/data
LOG_FILE=$STATE_DIR/server.log
PID_FILE=$STATE_DIR/server.pid
MAIN_CLASS=com.amazonaws.services.dynamodbv2.local.main.ServerRunner

log() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Serialize install/start/stop between concurrent callers (e.g. parallel test workers).
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

java_major() {
    java -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p' | head -n1 | cut -d. -f1
}

ensure_tools() {
    local missing=()
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if ((${#missing[@]})); then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "installing missing tools with apt-get: ${missing[*]}"
            if ! { apt-get update -qq >&2 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; }; then
                die "apt-get install ${missing[*]} failed"
            fi
        else
            die "missing tools: ${missing[*]} (need java >= 17, maven, python3)"
        fi
    fi
    local major
    major=$(java_major)
    [[ -n $major && $major -ge 17 ]] || die "DynamoDB Local $VERSION needs java >= 17, found: $(java -version 2>&1 | head -n1)"
}

pom_stamp() { printf '%s %s\n' "$VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"; }

installed() {
    [[ -f $INSTALL_DIR/.complete && $(cat "$INSTALL_DIR/.complete") == "$(pom_stamp)" ]] &&
        [[ -f $LIB_DIR/DynamoDBLocal.jar && -f $LIB_DIR/sqlite4java.jar ]]
}

do_install() {
    installed && return 0
    ensure_tools
    [[ $(uname -m) == x86_64 ]] ||
        log "WARNING: sqlite4java ships native libraries for linux x86_64 only; $(uname -m) may not work"
    log "installing DynamoDB Local $VERSION from Maven Central into $INSTALL_DIR (first run takes ~1 min)"
    local tmp=$INSTALL_DIR.tmp.$$ mlog=$CACHE_DIR/install.log attempt ok=0
    rm -rf "$tmp"
    mkdir -p "$tmp/lib"
    for attempt in 1 2 3; do
        if mvn -B -ntp -q -f "$POM" \
            -Dmaven.repo.local="$CACHE_DIR/m2" \
            -Ddynamodb.local.version="$VERSION" \
            dependency:copy-dependencies -DoutputDirectory="$tmp/lib" >"$mlog" 2>&1; then
            ok=1
            break
        fi
        log "maven attempt $attempt failed; last lines of $mlog:"
        tail -n 20 "$mlog" >&2
        sleep $((attempt * 5))
    done
    ((ok)) || { rm -rf "$tmp"; die "could not fetch DynamoDB Local $VERSION with maven"; }
    # copy-dependencies is configured with stripVersion, so the native library is
    # already named as sqlite4java expects; keep a fallback for other layouts.
    if [[ ! -f $tmp/lib/libsqlite4java-linux-amd64.so ]]; then
        local so
        so=$(find "$tmp/lib" -name 'libsqlite4java-linux-amd64*.so' | head -n1)
        [[ -n $so ]] || { rm -rf "$tmp"; die "sqlite4java native library missing from $tmp/lib"; }
        cp "$so" "$tmp/lib/libsqlite4java-linux-amd64.so"
    fi
    [[ -f $tmp/lib/DynamoDBLocal.jar ]] || { rm -rf "$tmp"; die "DynamoDBLocal.jar missing after maven run"; }
    pom_stamp >"$tmp/.complete"
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    log "installed ($(du -sh "$LIB_DIR" | cut -f1) of jars)"
}

cmd_install() { with_lock "$CACHE_DIR.lock" do_install; }

# ---------------------------------------------------------------- process helpers

our_pid() { # prints the pid of the server we started, if it is still alive
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # guard against pid reuse: it must be our java with our data dir
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$MAIN_CLASS" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-dbPath $DATA_DIR -port " || return 1
    echo "$pid"
}

# The running server must be the one for the configured port.
serves_our_port() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "-port $PORT -disableTelemetry"; }

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

# A real API call (ListTables) signed with dummy credentials; DynamoDB Local
# accepts any access key but rejects unsigned requests.
probe() {
    python3 - "$HOST" "$PORT" "$REGION" <<'PY' 2>/dev/null
import json, sys, time, urllib.request
host, port, region = sys.argv[1], sys.argv[2], sys.argv[3]
day = time.strftime("%Y%m%d", time.gmtime())
req = urllib.request.Request(
    f"http://{host}:{port}/", data=b"{}", method="POST",
    headers={
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.ListTables",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=test/{day}/{region}/dynamodb/aws4_request, "
                         "SignedHeaders=content-type;host;x-amz-target, Signature=0",
    })
with urllib.request.urlopen(req, timeout=5) as r:
    body = json.load(r)
sys.exit(0 if "TableNames" in body else 1)
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
        port_open && die "port $HOST:$PORT is already in use by another process (set AOS_TEST_DYNAMODB_PORT)"
        mkdir -p "$DATA_DIR"
        log "starting DynamoDB Local $VERSION on $HOST:$PORT (data in $DATA_DIR, log $LOG_FILE)"
        printf '\n==== %s start (port %s) ====\n' "$(date -Is)" "$PORT" >>"$LOG_FILE"
        # shellcheck disable=SC2086 # JAVA_OPTS is a word list on purpose
        (
            cd "$STATE_DIR"
            exec setsid nohup java $JAVA_OPTS \
                -Djava.library.path="$LIB_DIR" \
                -cp "$LIB_DIR/*" "$MAIN_CLASS" \
                -sharedDb -dbPath "$DATA_DIR" -port "$PORT" -disableTelemetry \
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
            die "DynamoDB Local exited during startup"
        fi
        if probe; then
            log "ready on $HOST:$PORT after $((SECONDS - start)) s (pid $pid)"
            return 0
        fi
        if ((SECONDS - start >= START_TIMEOUT)); then
            log_tail 40
            kill_wait "$pid"
            rm -f "$PID_FILE"
            die "DynamoDB Local did not become ready within ${START_TIMEOUT} s"
        fi
        sleep 0.3
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
    port=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 's/.* -port \([0-9]*\) .*/\1/p')
    PORT=${port:-$PORT}
    log "stopping pid $pid (port $PORT)"
    kill_wait "$pid"
    rm -f "$PID_FILE"
    local i
    # the port must be free again before we report success
    for ((i = 0; i < 50; i++)); do
        port_open || break
        sleep 0.1
    done
    port_open && log "WARNING: $HOST:$PORT still accepts connections (another process?)"
    log "stopped"
}

cmd_stop() { with_lock "$STATE_DIR.lock" do_stop; }

cmd_url() { echo "dynamodb://$HOST:$PORT?region=$REGION"; }

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
