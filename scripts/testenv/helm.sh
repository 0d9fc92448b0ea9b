#!/usr/bin/env bash
# Helm 3 (built from the Go module proxy) for the deployment tests (tests/deploy):
#
#   scripts/testenv/helm.sh install|path|version
#
# `path` prints the binary's path on stdout (installing it first); all else goes
# to stderr. The build sets the same -ldflags as Helm's Makefile, so `helm version`
# names the release and `.Capabilities.KubeVersion` defaults to the Kubernetes
# version of the client-go that Helm is built against (without them it is 1.20);
# the tests still pass --kube-version explicitly.
#
# Env: AOS_TEST_HELM_VERSION (v3.21.4), XDG_CACHE_HOME. Needs go >= 1.26.
set -euo pipefail
TESTENV_NAME=helm
MODULE=helm.sh/helm/v3
PACKAGE=cmd/helm
VERSION="${AOS_TEST_HELM_VERSION:-v3.21.4}"
# shellcheck source=lib-go.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-go.sh"

# Helm's Makefile: the Kubernetes version is client-go's v0.<minor> plus 1.<minor>.
go_tool_ldflags() {
  local client_go minor flags
  client_go="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$1/go.mod" | head -n1)"
  flags="-X $MODULE/internal/version.version=$VERSION"
  if [ -n "$client_go" ]; then
    for minor in pkg/lint/rules pkg/chartutil; do
      flags+=" -X $MODULE/$minor.k8sVersionMajor=1 -X $MODULE/$minor.k8sVersionMinor=$client_go"
    done
  fi
  echo "$flags"
}

go_tool_main "$@"
