# shellcheck shell=bash
# Build a Go command line tool from the Go module proxy into the test-environment
# cache, once (sourced by helm.sh and kustomize.sh, not executed).
#
# The sourcing script sets TESTENV_NAME, and calls
#
#     go_tool_main "$@"
#
# after defining MODULE (the module path), PACKAGE (the main package inside it,
# empty for the module's root),
# VERSION, and optionally go_tool_ldflags (a function printing -ldflags for the
# downloaded module's directory, given as $1). Commands: install (idempotent,
# serialized with flock), path (installs if needed, then prints the binary's path
# on stdout), version. Everything else, logs included, goes to stderr.
#
# Go settings: GOTOOLCHAIN=local (no toolchain downloads), CGO_ENABLED=0, and
# GOMODCACHE/GOCACHE/GOPATH/GOBIN under $XDG_CACHE_HOME/aos-testenv/<name>, so
# `rm -rf` of that directory undoes everything. When sum.golang.org cannot be
# reached the build is retried with GOSUMDB=off (the module's go.sum still pins
# every dependency). When the proxy refuses the version list `go install pkg@v`
# asks for, the same module version is built from `go mod download` with `go build`.

# shellcheck source=lib-sql.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-sql.sh"

go_tool_cache() { echo "$TESTENV_CACHE_ROOT/$TESTENV_NAME"; }
go_tool_bindir() { echo "$(go_tool_cache)/bin-$VERSION"; }
go_tool_bin() { echo "$(go_tool_bindir)/$TESTENV_NAME"; }

go_tool_installed() {
  [ -x "$(go_tool_bin)" ] && [ "$(cat "$(go_tool_bindir)/.complete" 2>/dev/null)" = "$VERSION" ]
}

go_tool_env() {
  local cache; cache="$(go_tool_cache)"
  env GOTOOLCHAIN=local GOMODCACHE="$cache/gomod" GOCACHE="$cache/gobuild" \
      GOPATH="$cache/gopath" GOBIN="$(go_tool_bindir)" GOFLAGS="-modcacherw" GOWORK=off \
      CGO_ENABLED=0 "$@"
}

# go_tool_build_once GOSUMDB-value: output in $cache/install.log
go_tool_build_once() {
  local sumdb=$1 cache json dir ldflags="" log_file
  cache="$(go_tool_cache)"; log_file="$cache/install.log"
  json="$(go_tool_env ${sumdb:+GOSUMDB=$sumdb} go mod download -json "$MODULE@$VERSION" 2>>"$log_file")" \
    || { echo "$json" >>"$log_file"; return 1; }
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  if [ -z "$dir" ] || [ ! -f "$dir/go.mod" ]; then echo "$json" >>"$log_file"; return 1; fi
  if declare -F go_tool_ldflags >/dev/null; then ldflags="$(go_tool_ldflags "$dir")"; fi
  local target="$MODULE${PACKAGE:+/$PACKAGE}"
  log "go install $target@$VERSION (GOSUMDB=${sumdb:-default})"
  if go_tool_env ${sumdb:+GOSUMDB=$sumdb} go install -trimpath -ldflags "-s -w $ldflags" \
       "$target@$VERSION" >>"$log_file" 2>&1; then
    return 0
  fi
  log "go install failed; building $PACKAGE in the downloaded module $dir"
  ( cd "$dir" && go_tool_env ${sumdb:+GOSUMDB=$sumdb} go build -mod=readonly -trimpath \
      -ldflags "-s -w $ldflags" -o "$(go_tool_bin)" "./${PACKAGE:-.}" ) >>"$log_file" 2>&1
}

go_tool_do_install() {
  go_tool_installed && return 0
  command -v go >/dev/null 2>&1 || die "the go command is needed to build $TESTENV_NAME $VERSION"
  local cache t0=$SECONDS; cache="$(go_tool_cache)"
  mkdir -p "$cache" "$(go_tool_bindir)"
  : >"$cache/install.log"
  log "building $TESTENV_NAME $VERSION into $(go_tool_bindir) (first time: a few minutes; log $cache/install.log)"
  if ! go_tool_build_once ""; then
    if grep -q -i 'sum.golang.org\|verifying .*module\|SECURITY ERROR\|checksum database' "$cache/install.log"; then
      log "checksum database unreachable; retrying with GOSUMDB=off"
      go_tool_build_once off || { tail -n 30 "$cache/install.log" >&2; die "building $TESTENV_NAME $VERSION failed"; }
    else
      tail -n 30 "$cache/install.log" >&2
      die "building $TESTENV_NAME $VERSION failed; see $cache/install.log"
    fi
  fi
  [ -x "$(go_tool_bin)" ] || die "no binary at $(go_tool_bin) after the build"
  echo "$VERSION" >"$(go_tool_bindir)/.complete"
  log "built $TESTENV_NAME $VERSION in $((SECONDS - t0))s"
}

go_tool_install() {
  local lock; lock="$(go_tool_cache).lock"
  go_tool_installed && return 0
  mkdir -p "$(dirname "$lock")"
  if command -v flock >/dev/null 2>&1; then
    ( flock -w 1800 9 || die "timed out waiting for $lock"; go_tool_do_install ) 9>"$lock"
  else
    go_tool_do_install
  fi
}

go_tool_main() {
  case "${1:-}" in
    install) go_tool_install ;;
    path) go_tool_install && go_tool_bin ;;
    version) go_tool_install && "$(go_tool_bin)" version >&2 ;;
    *) echo "usage: $0 install|path|version" >&2; exit 2 ;;
  esac
}
