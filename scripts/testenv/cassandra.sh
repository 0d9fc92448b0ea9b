#!/usr/bin/env bash
# Single-node Apache Cassandra 5.0 server for the test suite, without Docker
# and without apache.org downloads: the server jars come from Maven Central
# (org.apache.cassandra:cassandra-all + runtime deps) and run on the system JDK 17.
#
#   scripts/testenv/cassandra.sh install   # fetch jars into the cache (idempotent)
#   scripts/testenv/cassandra.sh start     # install + start + wait for CQL (idempotent)
#   scripts/testenv/cassandra.sh stop      # graceful stop (data is kept)
#   scripts/testenv/cassandra.sh status    # exit 0 iff CQL answers a query (else 3)
#   scripts/testenv/cassandra.sh url       # cassandra://127.0.0.1:PORT
#   scripts/testenv/cassandra.sh restart | logs [N]
#
# Environment:
#   AOS_TEST_CASSANDRA_PORT          CQL port (default 9042)
#   AOS_TEST_CASSANDRA_STORAGE_PORT  inter-node port, bound on 127.0.0.1 (default 7000)
#   AOS_TEST_CASSANDRA_HEAP          JVM heap, -Xms/-Xmx (default 1G)
#   AOS_TEST_CASSANDRA_START_TIMEOUT seconds to wait for CQL (default 180)
#   AOS_TEST_CASSANDRA_STOP_TIMEOUT  seconds before SIGKILL on stop (default 120)
#   AOS_TEST_CASSANDRA_CDS           1 (default) / 0: class-data-sharing archive
#   AOS_TESTENV_STATE                state root (default $XDG_STATE_HOME/aos-testenv)
#   XDG_CACHE_HOME                   cache root (default ~/.cache)
#   JAVA_HOME                        JDK to use (default: java on PATH); needs 17
# Needs: Java 17, mvn, python3 (stdlib CQL probe), util-linux (flock, setsid,
# setpriv); missing ones are apt-get installed when running as root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ASSETS="$HERE/cassandra"

CASSANDRA_VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$ASSETS/pom.xml")"
HOST=127.0.0.1
PORT="${AOS_TEST_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${AOS_TEST_CASSANDRA_STORAGE_PORT:-7000}"
HEAP="${AOS_TEST_CASSANDRA_HEAP:-1G}"
START_TIMEOUT="${AOS_TEST_CASSANDRA_START_TIMEOUT:-180}"
STOP_TIMEOUT="${AOS_TEST_CASSANDRA_STOP_TIMEOUT:-120}"

STATE_DIR="${AOS_TESTENV_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/aos-testenv}/cassandra"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/aos-testenv/cassandra"
M2_REPO="$CACHE_DIR/m2"
LIB_DIR="$CACHE_DIR/lib-$CASSANDRA_VERSION"
PID_FILE="$STATE_DIR/cassandra.pid"
LOG_DIR="$STATE_DIR/logs"
CONF_DIR="$STATE_DIR/conf"
STDOUT_LOG="$LOG_DIR/stdout.log"

log() { printf '[cassandra.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Serialise install/start/stop across concurrent invocations (flock on a file
# in DIR; held until unlock or exit).
LOCK_FD=
with_lock() {
  local name="$1" dir="$2"
  mkdir -p "$dir"
  exec {LOCK_FD}>"$dir/.$name.lock"
  flock "$LOCK_FD"
}
unlock() {
  if [[ -n "$LOCK_FD" ]]; then exec {LOCK_FD}>&-; LOCK_FD=; fi
}

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (need OpenJDK 17: apt-get install openjdk-17-jre-headless)"
  fi
}

java_major() {
  "$1" -XshowSettings:properties -version 2>&1 \
    | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n1
}

# ---------------------------------------------------------------- install

# CI images have these already; on a bare Debian box install them as root.
ensure_tools() {
  local missing=()
  [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME:-}/bin/java" ]] || command -v java >/dev/null 2>&1 \
    || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v flock >/dev/null 2>&1 || missing+=(util-linux)
  (( ${#missing[@]} )) || return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing missing tools with apt-get: ${missing[*]}"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600)
    { "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2 \
      || { "${apt[@]}" update >&2 && "${apt[@]}" install --no-install-recommends "${missing[@]}" >&2; }; } \
      || die "apt-get install ${missing[*]} failed"
  else
    die "missing tools: ${missing[*]} (need Java 17, maven, python3, util-linux)"
  fi
}

pom_hash() { sha256sum "$ASSETS/pom.xml" | cut -d' ' -f1; }

installed() {
  [[ -f "$LIB_DIR/.complete" && "$(cat "$LIB_DIR/.complete")" == "$(pom_hash)" ]]
}

do_install() {
  ensure_tools
  installed && return 0
  with_lock install "$CACHE_DIR"
  if installed; then unlock; return 0; fi
  log "downloading Cassandra $CASSANDRA_VERSION jars from Maven Central into $LIB_DIR ..."
  local tmp="$LIB_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$M2_REPO"
  local mvn_log="$CACHE_DIR/mvn.log"
  if ! mvn -B -ntp -f "$ASSETS/pom.xml" \
        -Dmaven.repo.local="$M2_REPO" \
        org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2
    rm -rf "$tmp"
    die "maven download failed (full log: $mvn_log)"
  fi
  ls "$tmp"/cassandra-all-"$CASSANDRA_VERSION".jar >/dev/null 2>&1 \
    || die "cassandra-all-$CASSANDRA_VERSION.jar missing after download"
  ls "$tmp"/jamm-*.jar >/dev/null 2>&1 || die "jamm agent jar missing after download"
  pom_hash >"$tmp/.complete"
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  unlock
  log "installed $(ls "$LIB_DIR"/*.jar | wc -l) jars ($(du -sh "$LIB_DIR" | cut -f1))"
}

# ---------------------------------------------------------------- process state

# Prints the pid if our Cassandra process is alive, else fails.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  # Make sure the pid was not recycled by an unrelated process.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-Dcassandra.storagedir=$STATE_DIR " || return 1
  echo "$pid"
}

cql_ok() {
  python3 "$ASSETS/cql_probe.py" "$HOST" "$PORT" "${1:-5}" 2>/dev/null
}

port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Print what the current/last launch wrote (not older runs' output).
log_tail() {
  if [[ -s "$STDOUT_LOG" ]]; then
    log "---- $STDOUT_LOG (this launch) ----"
    awk '/^==== .* starting Cassandra/{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$STDOUT_LOG" \
      | tail -n 30 >&2
  fi
  local new=""
  [[ -s "$LOG_DIR/system.log" ]] \
    && new="$(tail -n +"$(( ${SYSLOG_START_LINE:-0} + 1 ))" "$LOG_DIR/system.log" | tail -n 30)"
  if [[ -n "$new" ]]; then
    log "---- last lines of $LOG_DIR/system.log ----"
    printf '%s\n' "$new" >&2
  fi
}

# ---------------------------------------------------------------- start

render_config() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE_DIR/triggers" \
    "$STATE_DIR/data" "$STATE_DIR/commitlog" "$STATE_DIR/saved_caches" \
    "$STATE_DIR/hints" "$STATE_DIR/cdc_raw"
  sed -e "s#@STATE@#$STATE_DIR#g" \
      -e "s#@NATIVE_PORT@#$PORT#g" \
      -e "s#@STORAGE_PORT@#$STORAGE_PORT#g" \
      "$ASSETS/cassandra.yaml.in" >"$CONF_DIR/cassandra.yaml.tmp"
  mv "$CONF_DIR/cassandra.yaml.tmp" "$CONF_DIR/cassandra.yaml"
  cp "$ASSETS/logback.xml" "$CONF_DIR/logback.xml"
}

# Wait for CQL. Returns 0 when up, 2 if the process exited (pid file
# removed); dies on timeout.
wait_ready() {
  local pid="$1" t0="$2" version
  while :; do
    if version="$(cql_ok 5)"; then
      log "Cassandra $version is up on $HOST:$PORT (pid $pid, $(( $(date +%s) - t0 ))s)"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      return 2
    fi
    if (( $(date +%s) - t0 >= START_TIMEOUT )); then
      log_tail
      die "Cassandra (pid $pid) did not accept CQL on $HOST:$PORT within ${START_TIMEOUT}s; logs in $LOG_DIR (still running; '$0 stop' to kill it)"
    fi
    sleep 1
  done
}

died_during_startup() {
  log_tail
  die "Cassandra (pid $1) exited during startup; logs in $LOG_DIR"
}

# Class-data sharing: the first run with a given JDK + jar set records the
# loaded classes into an archive when the JVM exits (i.e. on `stop`); later
# starts map it, which saves ~2-4 s of class loading on a 2-core machine.
# The JVM itself validates the archive against the JDK and class path and
# silently ignores it on mismatch. AOS_TEST_CASSANDRA_CDS=0 turns this off.
CDS_DIR="$CACHE_DIR/cds"
CDS_DUMP="$STATE_DIR/cds-dump.jsa"
CDS_PENDING="$STATE_DIR/cds.pending"
cds_opts() {  # JAVA CLASSPATH -> prints one JVM option per line
  [[ "${AOS_TEST_CASSANDRA_CDS:-1}" == 1 && ! -e "$CDS_DIR/disabled" ]] || return 0
  local key archive
  key="$( { "$1" -version 2>&1; echo "$2"; } | sha256sum | cut -c1-16)"
  archive="$CDS_DIR/cassandra-$CASSANDRA_VERSION-$key.jsa"
  # CDS messages go to a file, not to stdout.log.
  echo "-Xlog:cds*=off"
  echo "-Xlog:cds*=warning:file=$LOG_DIR/cds.log"
  # Needed at dump time (jamm is a java agent) AND at run time: the JVM
  # ignores an archive whose flag setting differs.
  echo "-XX:+UnlockDiagnosticVMOptions"
  echo "-XX:+AllowArchivingWithJavaAgent"
  if [[ -s "$archive" ]]; then
    echo "-XX:SharedArchiveFile=$archive"
  else
    mkdir -p "$CDS_DIR"
    rm -f "$CDS_DUMP"
    echo "$archive" >"$CDS_PENDING"
    echo "-XX:ArchiveClassesAtExit=$CDS_DUMP"
  fi
}

# After the JVM has exited: keep a freshly dumped CDS archive if the exit
# was graceful, else drop it.
cds_collect() {  # graceful(0|1)
  [[ -f "$CDS_PENDING" ]] || return 0
  local target; target="$(cat "$CDS_PENDING")"
  if [[ "$1" == 1 && -s "$CDS_DUMP" && -n "$target" ]]; then
    mkdir -p "$(dirname "$target")"
    mv -f "$CDS_DUMP" "$target.tmp.$$" && mv -f "$target.tmp.$$" "$target" \
      && log "saved class-data-sharing archive for faster starts ($target)"
  fi
  rm -f "$CDS_DUMP" "$CDS_PENDING"
}

do_start() {
  local pid
  if pid="$(running_pid)" && cql_ok 5 >/dev/null; then
    log "already running (pid $pid) on $HOST:$PORT"
    return 0
  fi
  do_install
  with_lock start "$STATE_DIR"

  local t0; t0="$(date +%s)"
  if pid="$(running_pid)"; then
    # Started by someone else (or still starting): just wait for it.
    unlock
    log "Cassandra process $pid exists; waiting for CQL ..."
    wait_ready "$pid" "$t0" || died_during_startup "$pid"
    return 0
  fi
  rm -f "$PID_FILE"
  cds_collect 0   # leftovers of a run that was not stopped by us
  port_in_use "$PORT" && die "port $HOST:$PORT is already in use by another process (set AOS_TEST_CASSANDRA_PORT)"
  port_in_use "$STORAGE_PORT" && die "port $HOST:$STORAGE_PORT is already in use by another process (set AOS_TEST_CASSANDRA_STORAGE_PORT)"

  local java major
  java="$(java_bin)"
  major="$(java_major "$java")"
  [[ "$major" == 17 || "$major" == 11 ]] \
    || die "Cassandra 5.0 runs on Java 11 or 17, but $java is Java $major (set JAVA_HOME)"

  render_config

  local opts=() line
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line#"${line%%[![:space:]]*}"}"; line="${line%"${line##*[![:space:]]}"}"
    [[ "$line" == -* ]] && opts+=("$line")
  done <"$ASSETS/jvm17-server.options"

  # Explicit, sorted class path (no directories: CDS requires that).
  local cp jamm
  cp="$(find "$LIB_DIR" -maxdepth 1 -name '*.jar' | LC_ALL=C sort | paste -sd: -)"
  jamm="$(find "$LIB_DIR" -maxdepth 1 -name 'jamm-*.jar' | LC_ALL=C sort | head -n1)"
  opts+=(
    "-Xms$HEAP" "-Xmx$HEAP"
    "-javaagent:$jamm"
    "-Xlog:gc=info,heap*=info,safepoint=info:file=$LOG_DIR/gc.log:time,uptime,pid,tid,level:filecount=3,filesize=10485760"
    "-Dcassandra.config=file://$CONF_DIR/cassandra.yaml"
    "-Dcassandra.storagedir=$STATE_DIR"
    "-Dcassandra.logdir=$LOG_DIR"
    "-Dcassandra.triggers_dir=$STATE_DIR/triggers"
    "-Dlogback.configurationFile=$CONF_DIR/logback.xml"
    "-Dcassandra-foreground=yes"
    "-Dcassandra.native_transport_port=$PORT"
    "-Dcassandra.storage_port=$STORAGE_PORT"
  )

  # Cassandra wants many file descriptors; raise the soft limit if we can.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  # Cassandra mlockall()s the JVM when it can; as root that faults in and pins
  # the whole heap (~+1 GB RSS at idle). A test server needs no pinned memory:
  # drop CAP_IPC_LOCK and keep the memlock limit small so mlockall just fails
  # (one harmless WARN in the log).
  local nolock=()
  ulimit -l 64 2>/dev/null || true
  if [[ "$(id -u)" == 0 ]] && command -v setpriv >/dev/null 2>&1; then
    nolock=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)
  fi

  local cds=() attempt rc
  mapfile -t cds < <(cds_opts "$java" "$cp")
  for attempt in 1 2; do
    log "starting Cassandra $CASSANDRA_VERSION ($java, Java $major, heap $HEAP), state in $STATE_DIR"
    SYSLOG_START_LINE=0
    [[ -f "$LOG_DIR/system.log" ]] && SYSLOG_START_LINE="$(wc -l <"$LOG_DIR/system.log")"
    echo "==== $(date -Is) starting Cassandra $CASSANDRA_VERSION" >>"$STDOUT_LOG"
    (
      # The daemon must not inherit our lock fd, or it would hold the lock forever.
      unlock
      cd "$STATE_DIR"
      exec setsid nohup "${nolock[@]}" "$java" "${opts[@]}" "${cds[@]}" -cp "$cp" \
        org.apache.cassandra.service.CassandraDaemon >>"$STDOUT_LOG" 2>&1 </dev/null
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    rc=0
    wait_ready "$pid" "$t0" || rc=$?
    if (( rc == 0 )); then
      if (( attempt == 2 )); then
        mkdir -p "$CDS_DIR"
        touch "$CDS_DIR/disabled"
        log "class-data sharing disabled for this cache (remove $CDS_DIR/disabled to retry)"
      fi
      return 0
    fi
    # Died. If class-data-sharing flags were in play, retry once without them
    # and, if that works, keep CDS off for this cache.
    (( attempt == 1 && ${#cds[@]} > 0 )) || break
    log_tail
    log "Cassandra exited during startup; retrying without class-data sharing"
    rm -f "$CDS_DUMP" "$CDS_PENDING"
    cds=()
  done
  died_during_startup "$pid"
}

# ---------------------------------------------------------------- stop

do_stop() {
  mkdir -p "$STATE_DIR"
  with_lock start "$STATE_DIR"
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    cds_collect 0
    unlock
    log "not running"
    return 0
  fi
  log "stopping Cassandra (pid $pid) ..."
  local t0 graceful=1; t0="$(date +%s)"
  # SIGTERM runs Cassandra's shutdown hook, which drains (flushes memtables).
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) - t0 >= STOP_TIMEOUT )); then
      log "still running after ${STOP_TIMEOUT}s; sending SIGKILL (commit log replay will recover acknowledged writes)"
      kill -KILL "$pid" 2>/dev/null || true
      graceful=0
      break
    fi
    sleep 0.2
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$PID_FILE"
  cds_collect "$graceful"
  unlock
  log "stopped ($(( $(date +%s) - t0 ))s)"
}

# ---------------------------------------------------------------- main

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status)
    pid="$(running_pid || true)"
    if version="$(cql_ok 5)"; then
      log "running: Cassandra $version on $HOST:$PORT${pid:+ (pid $pid)}"
      exit 0
    fi
    log "not accepting CQL on $HOST:$PORT${pid:+ (process $pid is alive)}"
    exit 3
    ;;
  url) echo "cassandra://$HOST:$PORT" ;;
  logs)
    for f in "$STDOUT_LOG" "$LOG_DIR/system.log"; do
      [[ -f "$f" ]] || continue
      log "---- $f ----"
      tail -n "${2:-60}" "$f" >&2
    done
    ;;
  *)
    echo "usage: $0 {install|start|stop|restart|status|url|logs [N]}" >&2
    exit 2
    ;;
esac
