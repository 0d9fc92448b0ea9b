#!/usr/bin/env bash
# kustomize v5 (built from the Go module proxy) for the deployment tests (tests/deploy):
#
#   scripts/testenv/kustomize.sh install|path|version
#
# `path` prints the binary's path on stdout (installing it first); all else goes
# to stderr. v5.8.2 is the newest v5 that builds with Go 1.26 (v5.8.3's go.mod asks
# for Go 1.27, and GOTOOLCHAIN=local never downloads a toolchain).
#
# Env: AOS_TEST_KUSTOMIZE_VERSION (v5.8.2), XDG_CACHE_HOME. Needs go >= 1.26.
set -euo pipefail
TESTENV_NAME=kustomize
MODULE=sigs.k8s.io/kustomize/kustomize/v5
PACKAGE=
VERSION="${AOS_TEST_KUSTOMIZE_VERSION:-v5.8.2}"
# shellcheck source=lib-go.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-go.sh"

# The version `kustomize version` prints (release builds set it the same way).
go_tool_ldflags() { echo "-X sigs.k8s.io/kustomize/api/provenance.version=$VERSION"; }

go_tool_main "$@"
