# shellcheck shell=bash
# apt helper (sourced). Needs log/die from lib-sql.sh.

# apt_install PKG...: install Debian packages, non-interactively.
#  - waits for the dpkg lock instead of failing (another script may be running apt),
#  - runs `apt-get update` only if the first install attempt fails,
#  - keeps apt's output off stdout,
#  - prevents the packages' maintainer scripts from starting the system-wide
#    services (postgresql 15/main, mariadb on /var/lib/mysql) that would grab our ports.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  # Lock::Timeout: wait (up to 10 min) for a concurrent apt/dpkg instead of failing.
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q
             -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # policy-rc.d exiting 101 = "don't start services" (Debian images often ship one).
  local policy=/usr/sbin/policy-rc.d created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"; created_policy=1
  fi
  local attempt ok=""
  for attempt in 1 2 3; do
    log "apt-get install $* (attempt $attempt)"
    if "${apt[@]}" install --no-install-recommends "$@" >&2; then ok=1; break; fi
    log "install failed; running apt-get update"
    "${apt[@]}" update >&2 || true
    sleep $(((attempt - 1) * 5))
  done
  [ -z "$created_policy" ] || "${sudo[@]}" rm -f "$policy"
  [ -n "$ok" ] || die "apt-get install $* failed"
}
