#!/usr/bin/env bash
# The CustomResourceDefinitions of prometheus-operator (ServiceMonitor,
# PrometheusRule, …), for validating the chart's monitoring objects offline
# (tests/deploy). They come from the operator's Go module on the Go module proxy,
# fetched once with `go mod download` into the test-environment cache.
#
#   scripts/testenv/prometheus-operator-crds.sh install|path
#
# `path` prints the directory holding monitoring.coreos.com_*.yaml on stdout
# (installing first); all else goes to stderr.
#
# Env: AOS_TEST_PROMETHEUS_OPERATOR_VERSION (v0.85.0), XDG_CACHE_HOME. Needs go.
set -euo pipefail
TESTENV_NAME=prometheus-operator-crds
MODULE=github.com/prometheus-operator/prometheus-operator
VERSION="${AOS_TEST_PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# shellcheck source=lib-sql.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-sql.sh"
CACHE="$TESTENV_CACHE_ROOT/$TESTENV_NAME"
LINK="$CACHE/crds-$VERSION"

installed() { [ -f "$LINK/monitoring.coreos.com_servicemonitors.yaml" ]; }

fetch() { # fetch GOSUMDB-value: the module directory on stdout
  env GOTOOLCHAIN=local GOMODCACHE="$CACHE/gomod" GOPATH="$CACHE/gopath" GOFLAGS=-modcacherw \
      ${1:+GOSUMDB=$1} go mod download -json "$MODULE@$VERSION" 2>>"$CACHE/install.log" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

do_install() {
  installed && return 0
  command -v go >/dev/null 2>&1 || die "the go command is needed to fetch $MODULE@$VERSION"
  mkdir -p "$CACHE"
  : >"$CACHE/install.log"
  log "fetching $MODULE@$VERSION from the Go module proxy (about 4 MB)"
  local dir
  dir="$(fetch "")" || true
  if [ -z "$dir" ] && grep -q -i 'sum.golang.org\|verifying .*module\|checksum database' "$CACHE/install.log"; then
    log "checksum database unreachable; retrying with GOSUMDB=off"
    dir="$(fetch off)" || true
  fi
  [ -n "$dir" ] || { tail -n 20 "$CACHE/install.log" >&2; die "go mod download $MODULE@$VERSION failed"; }
  [ -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" ] \
    || die "no CRDs in $dir/example/prometheus-operator-crd"
  ln -sfn "$dir/example/prometheus-operator-crd" "$LINK"
  log "CRDs in $LINK"
}

cmd_install() {
  installed && return 0
  mkdir -p "$TESTENV_CACHE_ROOT"
  if command -v flock >/dev/null 2>&1; then
    ( flock -w 900 9 || die "timed out waiting for $CACHE.lock"; do_install ) 9>"$CACHE.lock"
  else
    do_install
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  path) cmd_install && echo "$LINK" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
