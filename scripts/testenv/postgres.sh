#!/usr/bin/env bash
# PostgreSQL 15 test server: scripts/testenv/postgres.sh install|start|stop|status|url
# Own cluster under the state dir, run as the `postgres` user when invoked as root,
# listening on 127.0.0.1:${AOS_TEST_PG_PORT:-5432}; superuser role/db `aos`, password `aos`.
set -euo pipefail
TESTENV_NAME=postgres
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib-sql.sh"
. "$here/lib-apt.sh"

PORT="${AOS_TEST_PG_PORT:-5432}"
BIN=/usr/lib/postgresql/15/bin
DIR="$TESTENV_STATE_ROOT/postgres"
PGDATA="$DIR/data"
RUN="$DIR/run"          # unix socket dir (the system one, /var/run/postgresql, may not exist)
LOGFILE="$DIR/postgres.log"
if [ "$(id -u)" -eq 0 ]; then PGUSER_OS=postgres; else PGUSER_OS="$(id -un)"; fi

pg() { as_user "$PGUSER_OS" "$@"; }

cmd_install() {
  [ -x "$BIN/postgres" ] && [ -x "$BIN/psql" ] && return 0
  apt_install postgresql acl
}

init_cluster() {
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  log "initdb $PGDATA"
  mkdir -p "$DIR"
  ensure_reachable "$PGUSER_OS" "$DIR"
  [ "$(id -u)" -ne 0 ] || chown "$PGUSER_OS": "$DIR"
  pg mkdir -p "$RUN"
  rm -rf "$PGDATA"
  # --no-sync: a throwaway test cluster need not survive an OS crash right after initdb.
  pg "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
     --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  # Port and socket dir are passed on the command line at start, so changing
  # AOS_TEST_PG_PORT needs no re-init.
  pg tee -a "$PGDATA/postgresql.conf" >/dev/null <<CONF

# --- aos test server ---
listen_addresses = '127.0.0.1'
max_connections = 300
shared_buffers = 128MB
fsync = on
synchronous_commit = on
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
CONF
}

# Our postmaster is alive. Not `pg_ctl status`: it counts a zombie as running.
running() { pid_alive "$(head -n1 "$PGDATA/postmaster.pid" 2>/dev/null)" postgres; }

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2; }

cmd_status() {
  [ -x "$BIN/pg_isready" ] || return 1
  ready
}

bootstrap() {
  [ -f "$DIR/.bootstrapped" ] && return 0
  log "creating role and database aos"
  pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$PORT" -U postgres -d postgres >&2 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'aos') THEN
    CREATE ROLE aos LOGIN SUPERUSER CREATEDB PASSWORD 'aos';
  END IF;
END $$;
SELECT 'CREATE DATABASE aos OWNER aos' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'aos')
\gexec
SQL
  touch "$DIR/.bootstrapped"
}

cmd_start() {
  cmd_install
  init_cluster
  if running; then
    # Ours is up (or still starting): fast path.
    TESTENV_TIMEOUT=60 wait_for ready || die "postgres is running but not accepting connections on 127.0.0.1:$PORT; see $LOGFILE"
    bootstrap
    return 0
  fi
  port_open 127.0.0.1 "$PORT" && die "port $PORT is already in use by another process (not our cluster $PGDATA); set AOS_TEST_PG_PORT"
  log "starting postgres on 127.0.0.1:$PORT (log: $LOGFILE)"
  pg mkdir -p "$RUN"
  # Lock files left behind by a crash (kill -9). Postgres would clear them itself, except
  # when the dead postmaster is still an unreaped zombie, which it takes for a live one.
  rm -f "$PGDATA/postmaster.pid" "$RUN/.s.PGSQL.$PORT.lock"
  # pg_ctl -w waits until the server accepts connections; the postmaster gets its own session.
  pg "$BIN/pg_ctl" start -D "$PGDATA" -l "$LOGFILE" -w -t 60 -o "-p $PORT -k $RUN" >/dev/null \
    || { tail -n 30 "$LOGFILE" >&2 || true; die "postgres failed to start (or not ready within 60s); see $LOGFILE"; }
  bootstrap
  log "postgres ready: $(cmd_url)"
}

cmd_stop() {
  [ -f "$PGDATA/PG_VERSION" ] || return 0
  running || { log "postgres not running"; return 0; }
  log "stopping postgres"
  # fast = roll back open transactions, disconnect clients, clean shutdown checkpoint.
  pg "$BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 >/dev/null
}

cmd_url() { echo "postgresql://aos:aos@127.0.0.1:$PORT/aos"; }

case "${1:-}" in
  install|start|stop|status|url) "cmd_$1" ;;
  *) echo "usage: $0 install|start|stop|status|url" >&2; exit 2 ;;
esac
