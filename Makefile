# The two commands: `make run` (services, migrations, relay, worker) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: help setup lock services services-down status migrate topics run test test-unit lint typecheck layers format schemas bench peers peers-lock clean

help:
	@echo "make run       start services, apply migrations, run the relay and the worker"
	@echo "make test      lint, type-check, check the import layers and run the whole suite"
	@echo "make bench     run the benchmarks (make bench ARGS=--quick)"
	@echo "make demo      walk live through the seed's failure scenarios (make demo ARGS=--fast)"
	@echo "make services  start Kafka, PostgreSQL and Redis natively (services-down stops)"

setup: $(VENV)/.installed

# Every dependency, direct or not, at the version and hashes of requirements-dev.lock
# (requirements.lock: the runtime only, for the image), installed by the pip of
# requirements-bootstrap.lock; then the project itself.
$(VENV)/.installed: pyproject.toml requirements-dev.lock requirements-bootstrap.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-bootstrap.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

UV_VERSION := 0.13.8
LOCK_FLAGS := --universal --generate-hashes --python-version 3.11 --annotation-style line \
	--custom-compile-command "make lock" --no-emit-package sa01-resilience --quiet

# Re-resolve the lock files from pyproject.toml (after changing a dependency there).
lock: setup
	$(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

status:
	@scripts/services.sh status

migrate: setup services
	$(BIN)/faust -A streams migrate

topics: setup services
	$(BIN)/faust -A streams create-topics

run: setup services migrate topics
	scripts/run.sh

.PHONY: demo
demo: setup services migrate topics
	$(BIN)/python -m demo $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# The import-layer contract of pyproject.toml ([tool.sa01.layers]): no import cycle,
# no upward or sideways import (docs/architecture.md, "Layers").
layers: setup
	$(BIN)/python scripts/check_layers.py

schemas: setup
	$(BIN)/python -m schemas.export

test: setup lint typecheck layers services
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -p no:cacheprovider -m "not stops_services and not sasl" $(ARGS)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -m sasl $(ARGS)
	$(BIN)/python -m pytest -p no:cacheprovider -m stops_services $(ARGS)

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit $(ARGS)

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup services migrate peers
	$(BIN)/python -m bench $(ARGS)

# The peer row of the worker bench: Quix Streams in a virtualenv of its own (it pins its
# own confluent-kafka), at the versions and hashes of bench/peers/requirements.lock.
PEERS_VENV := .cache/peers-venv
peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: bench/peers/requirements.lock requirements-bootstrap.lock
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-bootstrap.lock
	$(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r bench/peers/requirements.lock
	@touch $@

peers-lock: setup
	$(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile bench/peers/requirements.in --generate-hashes --python-version 3.11 \
		--annotation-style line --custom-compile-command "make peers-lock" --quiet \
		-o bench/peers/requirements.lock

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache
