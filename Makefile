# The README's two set-up commands are `make run` and `make test`; both create
# the virtual environment first (again only when pyproject.toml changes).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format venv clean bench bench-store bench-webhooks bench-large-output bench-cluster

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,all]'
	touch $(STAMP)

venv: $(STAMP)

## run: start the service on the embedded SQLite store (./aos.db) at http://127.0.0.1:8080
run: venv
	$(BIN)/aos serve

## lint: ruff (lint and format check) and mypy --strict on the packages
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Real servers the suite runs against (scripts/testenv/<name>.sh), and the
# benchmark peers its smoke run of `make bench` needs (loadtests/peers/<name>.sh).
TEST_SERVERS ?= postgres mariadb cassandra dynamodb ferretdb
BENCH_PEERS ?= nchan centrifugo
# Tools the deployment tests drive (scripts/testenv/<name>.sh; tests/deploy).
TEST_TOOLS ?= helm kustomize prometheus-operator-crds

## test: lint, start the test servers and benchmark peers, install helm and kustomize, then the whole test suite
test: venv lint
	@for peer in $(BENCH_PEERS); do loadtests/peers/$$peer.sh start || exit 1; done
	@env_lines="$$(scripts/testenv/up $(TEST_SERVERS))" || exit 1; \
	tool_lines="$$(scripts/testenv/tools $(TEST_TOOLS))" || exit 1; \
	eval "$$env_lines"; \
	eval "$$tool_lines"; \
	$(BIN)/pytest

## bench: AOS (SQLite, PostgreSQL) side by side with Nchan and Centrifugo (docs/benchmarks.md)
bench: venv
	@env_lines="$$(scripts/testenv/up postgres)" || exit 1; \
	eval "$$env_lines"; \
	$(BIN)/python -m loadtests.bench

# Stores the per-store benchmarks run on (bench-store, bench-webhooks, bench-large-output).
BENCH_STORES ?= sqlite,postgresql,mysql,cassandra,mongodb,dynamodb

## bench-store: submit/append/status latency on every store (docs/benchmarks.md)
bench-store: venv
	@env_lines="$$(scripts/testenv/up $(TEST_SERVERS))" || exit 1; \
	eval "$$env_lines"; \
	$(BIN)/python -m loadtests.bench_store --stores $(BENCH_STORES)

## bench-webhooks: signed deliveries per second to a local receiver (docs/benchmarks.md)
bench-webhooks: venv
	@env_lines="$$(scripts/testenv/up $(TEST_SERVERS))" || exit 1; \
	eval "$$env_lines"; \
	$(BIN)/python -m loadtests.bench_webhooks --stores $(BENCH_STORES)

## bench-large-output: a 10 GiB output in and out, next to nginx (docs/benchmarks.md)
bench-large-output: venv
	@env_lines="$$(scripts/testenv/up $(TEST_SERVERS))" || exit 1; \
	eval "$$env_lines"; \
	$(BIN)/python -m loadtests.bench_large_output --size 10GiB --stores $(BENCH_STORES)

## bench-cluster: forwarding overhead: the same requests to the owner node and through another node
bench-cluster: venv
	@env_lines="$$(scripts/testenv/up postgres)" || exit 1; \
	eval "$$env_lines"; \
	$(BIN)/python -m loadtests.bench_cluster --store postgresql

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
