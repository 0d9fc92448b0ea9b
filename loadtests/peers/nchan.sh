#!/usr/bin/env bash
# Nchan (nginx + libnginx-mod-nchan, Debian packages) as a benchmark peer:
#
#   loadtests/peers/nchan.sh install|start|stop|restart|status|url|env|logs
#
# A private nginx instance (NOT the system nginx service): own config, pid, logs and
# temp dirs under $STATE/nchan, daemonised by nginx itself, listening on
# 127.0.0.1:${AOS_BENCH_NCHAN_PORT:-8091}. Locations (see nchan/nginx.conf.in):
#   POST /pub/<channel>              publish (body = data, X-EventSource-Event = event name)
#   GET  /sub/<channel>[?history=1]  EventSource; Last-Event-ID / ?last_event_id= resumes
#   GET  /static/status.json         a small JSON file from disk (static-file ceiling)
#   GET  /nchan_status               nchan_stub_status counters
# `url` prints the base URL on stdout, `env` prints export lines; all else goes to stderr.
#
# Env: AOS_BENCH_NCHAN_PORT (8091), AOS_BENCH_NCHAN_WORKERS (2),
#      AOS_BENCH_NCHAN_WORKER_CONNECTIONS (20480), AOS_BENCH_NCHAN_NOFILE (65536),
#      AOS_BENCH_NCHAN_SHM (256M), AOS_BENCH_NCHAN_BUFFER (1000 messages per channel),
#      AOS_BENCH_NCHAN_MESSAGE_TIMEOUT (1h), AOS_BENCH_NCHAN_PING (15 s),
#      AOS_BENCH_NCHAN_START_TIMEOUT (30 s), AOS_TESTENV_STATE, XDG_STATE_HOME.
set -euo pipefail
TESTENV_NAME=nchan
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
testenv="$(cd "$here/../../scripts/testenv" && pwd)"
. "$testenv/lib-sql.sh"
. "$testenv/lib-apt.sh"

HOST=127.0.0.1
PORT="${AOS_BENCH_NCHAN_PORT:-8091}"
WORKERS="${AOS_BENCH_NCHAN_WORKERS:-2}"
WANT_WORKER_CONNECTIONS="${AOS_BENCH_NCHAN_WORKER_CONNECTIONS:-20480}"
WANT_NOFILE="${AOS_BENCH_NCHAN_NOFILE:-65536}"
SHM="${AOS_BENCH_NCHAN_SHM:-256M}"
BUFFER_LENGTH="${AOS_BENCH_NCHAN_BUFFER:-1000}"
MESSAGE_TIMEOUT="${AOS_BENCH_NCHAN_MESSAGE_TIMEOUT:-1h}"
PING_INTERVAL="${AOS_BENCH_NCHAN_PING:-15}"
START_TIMEOUT="${AOS_BENCH_NCHAN_START_TIMEOUT:-30}"

NGINX=/usr/sbin/nginx
MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
TEMPLATE="$here/nchan/nginx.conf.in"
DIR="$TESTENV_STATE_ROOT/nchan"
CONF="$DIR/conf/nginx.conf"
PIDFILE="$DIR/run/nginx.pid"
ERRLOG="$DIR/logs/error.log"
STARTLOG="$DIR/logs/start.log"

# Serialise start/stop between concurrent callers.
with_lock() {
  mkdir -p "$DIR"
  if command -v flock >/dev/null 2>&1; then
    ( flock -w 300 9 || die "timed out waiting for $DIR/.lock"; "$@" ) 9>"$DIR/.lock"
  else
    "$@"
  fi
}

cmd_install() {
  [ -x "$NGINX" ] && [ -f "$MODULE" ] && return 0
  # lib-apt.sh keeps the package's maintainer scripts from starting the system nginx.
  apt_install nginx libnginx-mod-nchan
  if [ ! -x "$NGINX" ] || [ ! -f "$MODULE" ]; then die "nginx or $MODULE missing after apt-get install"; fi
}

# The fd limit the workers can get: what we ask for, capped by the hard limit (only a
# process with CAP_SYS_RESOURCE can raise that; nginx would just log an alert).
effective_nofile() {
  local hard
  if [ "$(id -u)" -eq 0 ]; then ulimit -Hn "$WANT_NOFILE" 2>/dev/null || true; fi
  hard="$(ulimit -Hn)"
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$WANT_NOFILE" ]; then echo "$WANT_NOFILE"; else echo "$hard"; fi
}

render_conf() { # render_conf OUT
  local nofile wc user_line=""
  nofile="$(effective_nofile)"
  wc="$WANT_WORKER_CONNECTIONS"
  [ "$wc" -le "$nofile" ] || wc="$nofile"
  # As root the workers would otherwise run as `nobody`, which cannot reach a state dir
  # under /root; this is a loopback-only test peer.
  [ "$(id -u)" -ne 0 ] || user_line="user root root;"
  sed -e "s|@MODULE@|$MODULE|g" -e "s|@USER_LINE@|$user_line|g" \
      -e "s|@WORKERS@|$WORKERS|g" -e "s|@NOFILE@|$nofile|g" \
      -e "s|@WORKER_CONNECTIONS@|$wc|g" -e "s|@STATE@|$DIR|g" -e "s|@PORT@|$PORT|g" \
      -e "s|@SHM@|$SHM|g" -e "s|@BUFFER_LENGTH@|$BUFFER_LENGTH|g" \
      -e "s|@MESSAGE_TIMEOUT@|$MESSAGE_TIMEOUT|g" -e "s|@PING_INTERVAL@|$PING_INTERVAL|g" \
      "$TEMPLATE" >"$1"
  ! grep -v '^ *#' "$1" | grep -n '@[A-Z_]*@' >&2 || die "unrendered placeholder in $1"
}

prepare_dirs() {
  mkdir -p "$DIR"/{conf,run,logs,www/static} "$DIR"/tmp/{client_body,proxy,fastcgi,uwsgi,scgi}
  # The status document the polling benchmark fetches (same shape as AOS's
  # GET /api/v1/jobs/{id}/status). Rewritten only when missing so its ETag is stable.
  [ -f "$DIR/www/static/status.json" ] || printf '%s\n' \
    '{"jobId":"bench-job","status":"Running","progress":0.42,"estimatedCompletion":"2030-01-01T00:00:00Z","lastSeq":1234,"updatedAt":"2030-01-01T00:00:00Z"}' \
    >"$DIR/www/static/status.json"
}

conf_port() { sed -n 's/^ *listen 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$1" 2>/dev/null | head -n1; }

master_pid() { head -n1 "$PIDFILE" 2>/dev/null || true; }
running() { pid_alive "$(master_pid)" nginx; }

# One HTTP/1.0 GET over bash's /dev/tcp; true if the status line says 200.
http_200() {
  # shellcheck disable=SC2016  # the inner script's own positional parameters
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$3" >&3
    IFS= read -r line <&3 || exit 1
    case "$line" in "HTTP/1."?" 200 "*) exit 0 ;; *) exit 1 ;; esac' _ "$HOST" "$PORT" "$1" 2>/dev/null
}

ready() { http_200 /static/status.json && http_200 /nchan_status; }

log_tail() { # startup output, then the error log since the latest start marker
  local from
  if [ -s "$STARTLOG" ]; then log "output of nginx ($STARTLOG):"; tail -n 20 "$STARTLOG" >&2; fi
  [ -s "$ERRLOG" ] || return 0
  from="$(grep -n '^==== ' "$ERRLOG" | tail -n1 | cut -d: -f1 || true)"
  log "last lines of $ERRLOG:"
  tail -n +"${from:-1}" "$ERRLOG" | tail -n 20 >&2
}

# Every live nginx process of this instance, the master and its workers (also workers
# orphaned by a SIGKILLed master, which keep serving): they all run with cwd $DIR, as
# we start the master there and nginx never changes directory.
our_pids() {
  local f pid comm state
  for f in /proc/[0-9]*/stat; do
    read -r pid comm state _ <"$f" 2>/dev/null || continue
    if [ "$comm" != "(nginx)" ] || [ "$state" = Z ]; then continue; fi
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DIR" ] && echo "$pid"
  done
  return 0
}

worker_pids() { our_pids | grep -vx "$1" || true; }

# TERM PIDS..., wait up to 10 s, then KILL what is left.
terminate() {
  local i p left
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    left=""
    for p in "$@"; do pid_alive "$p" nginx && left="$left $p"; done
    [ -n "$left" ] || return 0
    sleep 0.1
  done
  log "still alive after 10 s:$left; SIGKILL"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  sleep 0.2
}

do_start() {
  cmd_install
  prepare_dirs
  local new="$CONF.new"
  render_conf "$new"
  if running; then
    if cmp -s "$new" "$CONF"; then
      rm -f "$new"
      TESTENV_TIMEOUT=$START_TIMEOUT wait_for ready || { log_tail; die "nginx (pid $(master_pid)) runs but does not serve on $HOST:$PORT"; }
      log "already running: $(cmd_url) (pid $(master_pid))"
      return 0
    fi
    # A restart rather than a reload (SIGHUP): old workers would linger with their open
    # SSE connections and skew what the benchmark measures.
    # Vet the new config (and a new port) before stopping the instance that works.
    "$NGINX" -t -q -p "$DIR" -c "$new" -e "$ERRLOG" 2>"$STARTLOG" || { cat "$STARTLOG" >&2; die "new config $new is invalid"; }
    [ "$(conf_port "$CONF")" = "$PORT" ] || ! port_open "$HOST" "$PORT" \
      || die "port $PORT is already in use by another process; set AOS_BENCH_NCHAN_PORT"
    log "config changed; restarting"
    do_stop
  fi
  mv "$new" "$CONF"
  [ -z "$(our_pids)" ] || do_stop   # orphaned workers of a killed master hold the port
  port_open "$HOST" "$PORT" && die "port $PORT is already in use by another process (not our nginx in $DIR); set AOS_BENCH_NCHAN_PORT"
  rm -f "$PIDFILE"
  log "starting nginx+nchan on $HOST:$PORT (conf $CONF, log $ERRLOG)"
  : >"$STARTLOG"
  printf '==== %s start\n' "$(date -u +%FT%TZ)" >>"$ERRLOG"
  # Raise the hard fd limit where we may (root with CAP_SYS_RESOURCE); the master
  # hands it down to the workers, which raise their own limit to worker_rlimit_nofile
  # within it. The daemon must
  # not inherit our lock fd 9.
  ( [ "$(id -u)" -ne 0 ] || ulimit -Hn "$WANT_NOFILE" 2>/dev/null || true
    cd "$DIR" && exec "$NGINX" -p "$DIR" -c "$CONF" -e "$ERRLOG" 9>&- ) </dev/null >>"$STARTLOG" 2>&1 \
    || { log_tail; die "nginx failed to start"; }
  TESTENV_TIMEOUT=$START_TIMEOUT wait_for ready \
    || { log_tail; die "nginx+nchan not serving on $HOST:$PORT within ${START_TIMEOUT}s; see $ERRLOG"; }
  log "nchan ready: $(cmd_url) (master pid $(master_pid), workers $(worker_pids "$(master_pid)" | tr '\n' ' '))"
}

do_stop() {
  local m stray
  if running; then
    m="$(master_pid)"
    log "stopping nginx (master $m)"
    # TERM = fast shutdown: open SSE connections are closed rather than waited for.
    # The master stops its workers itself.
    terminate "$m"
  fi
  # Workers left behind by a master that was SIGKILLed (or failed to stop them).
  stray="$(our_pids)"
  if [ -n "$stray" ]; then
    log "stopping leftover nginx processes of $DIR: $(echo "$stray" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    terminate $stray
  elif [ -z "${m:-}" ]; then
    log "nchan not running"
  fi
  rm -f "$PIDFILE"
}

cmd_start() { with_lock do_start; }
cmd_stop() { with_lock do_stop; }
cmd_restart() { with_lock do_stop; with_lock do_start; }

cmd_status() {
  if ! running; then log "not running"; return 3; fi
  if ! ready; then log "nginx (pid $(master_pid)) is alive but does not serve on $HOST:$PORT"; return 1; fi
  log "serving on $HOST:$PORT (master pid $(master_pid), workers $(worker_pids "$(master_pid)" | tr '\n' ' '))"
}

cmd_url() { echo "http://$HOST:$PORT"; }

cmd_env() {
  local u; u="$(cmd_url)"
  cat <<EOF
export AOS_BENCH_NCHAN_URL='$u'
export AOS_BENCH_NCHAN_PUB_URL='$u/pub/{channel}'
export AOS_BENCH_NCHAN_SUB_URL='$u/sub/{channel}'
export AOS_BENCH_NCHAN_SUB_HISTORY_URL='$u/sub/{channel}?history=1'
export AOS_BENCH_NCHAN_STATUS_URL='$u/static/status.json'
export AOS_BENCH_NCHAN_STATS_URL='$u/nchan_status'
export AOS_BENCH_NCHAN_PIDFILE='$PIDFILE'
EOF
}

cmd_logs() { tail -n "${2:-50}" "$ERRLOG" >&2; }

case "${1:-}" in
  install) cmd_install ;;
  start|stop|restart|status|url|env|logs) "cmd_$1" "$@" ;;
  *) echo "usage: $0 install|start|stop|restart|status|url|env|logs" >&2; exit 2 ;;
esac
