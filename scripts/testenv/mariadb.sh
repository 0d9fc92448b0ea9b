#!/usr/bin/env bash
# MariaDB 10.11 test server: scripts/testenv/mariadb.sh install|start|stop|status|url
# Own datadir under the state dir (not /var/lib/mysql), mariadbd run as `mysql`
# when invoked as root, on 127.0.0.1:${AOS_TEST_MYSQL_PORT:-3306}; user/db `aos`, password `aos`.
set -euo pipefail
TESTENV_NAME=mariadb
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib-sql.sh"
. "$here/lib-apt.sh"

PORT="${AOS_TEST_MYSQL_PORT:-3306}"
DIR="$TESTENV_STATE_ROOT/mariadb"
DATA="$DIR/data"
RUN="$DIR/run"
CNF="$DIR/my.cnf"
PIDFILE="$RUN/mariadbd.pid"
SOCK="$RUN/mariadbd.sock"
LOGFILE="$DIR/mariadb.log"
if [ "$(id -u)" -eq 0 ]; then DBUSER_OS=mysql; else DBUSER_OS="$(id -un)"; fi

cmd_install() {
  command -v mariadbd >/dev/null && command -v mariadb >/dev/null \
    && command -v mariadb-install-db >/dev/null && return 0
  apt_install mariadb-server mariadb-client acl
}

# Written on every start so edits here (or a new port) take effect; --defaults-file
# means /etc/mysql/* is ignored entirely.
write_cnf() {
  cat >"$CNF.tmp" <<CONF
[mariadbd]
user = $DBUSER_OS
datadir = $DATA
socket = $SOCK
pid-file = $PIDFILE
log-error = $LOGFILE
bind-address = 127.0.0.1
port = $PORT
skip-name-resolve
max_connections = 500
max_allowed_packet = 64M
innodb_buffer_pool_size = 256M
innodb_log_file_size = 128M
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci

[client]
socket = $SOCK
port = $PORT
CONF
  mv "$CNF.tmp" "$CNF"
}

init_datadir() {
  [ -d "$DATA/mysql" ] && return 0
  log "mariadb-install-db $DATA"
  mkdir -p "$DIR"
  ensure_reachable "$DBUSER_OS" "$DIR"
  [ "$(id -u)" -ne 0 ] || chown "$DBUSER_OS": "$DIR"
  as_user "$DBUSER_OS" mkdir -p "$RUN"
  rm -rf "$DATA"
  write_cnf
  # root@localhost authenticates by unix socket (OS user root, i.e. this script in CI).
  mariadb-install-db --defaults-file="$CNF" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/install-db.log" 2>&1 \
    || { cat "$DIR/install-db.log" >&2; rm -rf "$DATA"; die "mariadb-install-db failed"; }
}

# PID of our server if it is alive, else fail (a stale pid file whose pid was
# reused by some other program does not count).
our_pid() {
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
  pid_alive "$pid" mariadbd && echo "$pid"
}

# Admin access over the unix socket: mariadb-install-db gave root@localhost (and, when
# not run as root, the invoking user) unix_socket auth, so no password is involved.
admin_user() { if [ "$(id -u)" -eq 0 ]; then echo root; else id -un; fi; }
admin_sql() { mariadb --defaults-file="$CNF" -u"$(admin_user)"; }  # SQL on stdin
admin_ping() { mariadb-admin --defaults-file="$CNF" -u"$(admin_user)" --connect-timeout=2 ping; }

# Accepting connections = the aos user can log in over TCP. (A credential-less ping
# is not enough: MariaDB answers "host not allowed" and mariadb-admin exits 1.)
cmd_status() {
  command -v mariadb-admin >/dev/null || return 1
  mariadb-admin --no-defaults -h 127.0.0.1 -P "$PORT" -uaos -paos --connect-timeout=2 ping >/dev/null 2>&1
}

bootstrap() {
  [ -f "$DIR/.bootstrapped" ] && return 0
  log "creating user and database aos"
  admin_sql >&2 <<'SQL'
CREATE USER IF NOT EXISTS 'aos'@'%' IDENTIFIED BY 'aos';
CREATE USER IF NOT EXISTS 'aos'@'localhost' IDENTIFIED BY 'aos';
CREATE USER IF NOT EXISTS 'aos'@'127.0.0.1' IDENTIFIED BY 'aos';
GRANT ALL PRIVILEGES ON *.* TO 'aos'@'%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'aos'@'localhost' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'aos'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS aos;
SQL
  touch "$DIR/.bootstrapped"
}

wait_ready() {
  local pid=$1 deadline=$((SECONDS + 60))
  until admin_ping >/dev/null 2>&1; do
    pid_alive "$pid" mariadbd || { tail -n 30 "$LOGFILE" >&2 || true; die "mariadbd exited during startup; see $LOGFILE"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$LOGFILE" >&2 || true; die "mariadbd not accepting connections on 127.0.0.1:$PORT after 60s; see $LOGFILE"; }
    sleep 0.2
  done
}

cmd_start() {
  cmd_install
  init_datadir
  local pid
  if pid="$(our_pid)"; then
    # fast path: ours is up (or still starting)
    cmd_status && return 0
    wait_ready "$pid"
    bootstrap
    return 0
  fi
  port_open 127.0.0.1 "$PORT" && die "port $PORT is already in use by another process (not our mariadbd, $DATA); set AOS_TEST_MYSQL_PORT"
  write_cnf
  as_user "$DBUSER_OS" mkdir -p "$RUN"
  rm -f "$PIDFILE"
  log "starting mariadbd on 127.0.0.1:$PORT (log: $LOGFILE)"
  # Own session, no inherited stdio: a caller capturing our output must not wait on the daemon.
  setsid mariadbd --defaults-file="$CNF" </dev/null >>"$LOGFILE" 2>&1 &
  pid=$!
  wait_ready "$pid"
  bootstrap
  TESTENV_TIMEOUT=30 wait_for cmd_status || die "aos cannot log in over 127.0.0.1:$PORT; see $LOGFILE"
  log "mariadb ready: $(cmd_url)"
}

cmd_stop() {
  local pid
  pid="$(our_pid)" || { log "mariadb not running"; return 0; }
  log "stopping mariadbd (pid $pid)"
  kill -TERM "$pid"   # clean shutdown: InnoDB flushes, data survives
  local deadline=$((SECONDS + 60))
  while pid_alive "$pid" mariadbd; do
    [ "$SECONDS" -lt "$deadline" ] || die "mariadbd (pid $pid) did not stop within 60s"
    sleep 0.1
  done
}

cmd_url() { echo "mysql://aos:aos@127.0.0.1:$PORT/aos"; }

case "${1:-}" in
  install|start|stop|status|url) "cmd_$1" ;;
  *) echo "usage: $0 install|start|stop|status|url" >&2; exit 2 ;;
esac
