#!/bin/sh
# The container image's install steps (Dockerfile), in one script so that the
# test suite runs exactly the same commands without a Docker engine
# (tests/deploy/test_image.py):
#
#   deploy/install.sh wheels SRC WHEELHOUSE   build the service's wheel and every
#                                             dependency's into WHEELHOUSE
#   deploy/install.sh venv VENV WHEELHOUSE    a virtual environment at VENV with the
#                                             service installed from WHEELHOUSE only
#
# Env: AOS_EXTRAS (all): the store drivers to include (postgresql, mysql,
# cassandra, mongodb, dynamodb, all; comma-separated; empty: SQLite only).
# PYTHON (python3): the interpreter.
set -eu

PYTHON="${PYTHON:-python3}"
EXTRAS="${AOS_EXTRAS-all}"
PIP_FLAGS="--no-cache-dir --disable-pip-version-check --no-input --quiet"

spec() { # spec NAME-OR-PATH: the requirement with the chosen extras
  if [ -n "$EXTRAS" ]; then echo "$1[$EXTRAS]"; else echo "$1"; fi
}

case "${1:-}" in
  wheels)
    [ $# -eq 3 ] || { echo "usage: $0 wheels SRC WHEELHOUSE" >&2; exit 2; }
    # shellcheck disable=SC2086  # PIP_FLAGS is a word list
    "$PYTHON" -m pip wheel $PIP_FLAGS --prefer-binary --wheel-dir "$3" "$(spec "$2")"
    ;;
  venv)
    [ $# -eq 3 ] || { echo "usage: $0 venv VENV WHEELHOUSE" >&2; exit 2; }
    "$PYTHON" -m venv "$2"
    # shellcheck disable=SC2086
    "$2/bin/python" -m pip install $PIP_FLAGS --no-index --find-links "$3" \
      "$(spec async-output-service)"
    # The image runs on a read-only root filesystem: compile now, never at run time.
    "$2/bin/python" -m compileall -q "$2/lib"
    "$2/bin/aos" --version
    ;;
  *)
    echo "usage: $0 wheels SRC WHEELHOUSE | venv VENV WHEELHOUSE" >&2
    exit 2
    ;;
esac
