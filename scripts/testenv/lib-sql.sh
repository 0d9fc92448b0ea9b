# shellcheck shell=bash
# Generic helpers shared by postgres.sh and mariadb.sh (sourced, not executed).
# Everything here writes to stderr; only a script's `url` command uses stdout.

# shellcheck disable=SC2034  # used by the scripts that source this file
TESTENV_STATE_ROOT="${AOS_TESTENV_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/aos-testenv}"
# shellcheck disable=SC2034
TESTENV_CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/aos-testenv"

log() { printf '[testenv:%s] %s\n' "${TESTENV_NAME:-?}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command as the unprivileged service user when we are root (postgres and
# mariadbd refuse to/shouldn't run as root); as ourselves otherwise. `cd /` so the
# service user never trips over an unreadable cwd such as /root.
as_user() {
  local user=$1; shift
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u "$user" -- "$@"); else "$@"; fi
}

# The default state dir lives under $HOME, i.e. /root (mode 700) in CI. Give the
# service user search (x) permission on every ancestor it cannot traverse: a
# per-user ACL when possible, else o+x. Read/list permission is never granted.
ensure_reachable() {
  local user=$1 dir=$2 p=""
  [ "$(id -u)" -eq 0 ] || return 0
  local IFS=/ part
  for part in $dir; do
    [ -n "$part" ] || continue
    p="$p/$part"
    if ! as_user "$user" test -x "$p"; then
      log "granting $user search permission on $p"
      setfacl -m "u:$user:x" "$p" 2>/dev/null || chmod o+x "$p"
    fi
  done
}

# pid_alive PID NAME: PID is a live (not zombie) process whose command is NAME.
# Zombies count as dead: where PID 1 reaps slowly (as in some sandboxes/containers)
# an exited daemon stays a zombie for a while and `kill -0` still succeeds.
pid_alive() {
  local _pid comm state
  [ -n "$1" ] && read -r _pid comm state _ 2>/dev/null <"/proc/$1/stat" || return 1
  [ "$comm" = "($2)" ] && [ "$state" != Z ]
}

# True if something accepts TCP connections on host:port (bash /dev/tcp, no deps).
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_for CMD...: retry CMD every 0.2s until it succeeds or TESTENV_TIMEOUT (s) passes.
wait_for() {
  local deadline=$((SECONDS + ${TESTENV_TIMEOUT:-60}))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

wait_for_port() { wait_for port_open "$1" "$2"; }
