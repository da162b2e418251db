# Scheduled Payment Service — developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The test suite runs against the real PostgreSQL and RabbitMQ.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/spay
TEST_BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//
# Redis: the throttles' cache in production (REDIS_URL); tests use this database of the local server.
TEST_REDIS_URL ?= redis://127.0.0.1:6379/13
PYTEST_ARGS ?=

.PHONY: help venv run migrate test lint format services-check fuzz bench clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP) ## create the virtualenv and install pinned dependencies

migrate: $(STAMP) ## apply database migrations
	mkdir -p var/static
	$(BIN)/python manage.py migrate --noinput

# Without DATABASE_URL, config.embedded_postgres starts the embedded PostgreSQL (var/postgres) once
# for the migrations and every process, and stops it when honcho ends.
run: $(STAMP) ## start web, worker, recovery, beat and the sandbox gateway (embedded default unless URLs are set)
	mkdir -p var/static
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m config.embedded_postgres \
		sh -c 'python manage.py migrate --noinput && exec honcho start web worker recovery beat gateway'

services-check: $(STAMP) ## fail loudly unless PostgreSQL, RabbitMQ and Redis answer
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m config.check_services

test: $(STAMP) services-check ## the whole suite against the real PostgreSQL, RabbitMQ and Redis
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, mypy and the migrations check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove the embedded database (var/postgres), broker folder and caches
	rm -rf var .mypy_cache .ruff_cache .pytest_cache

# --- Benchmarks (bench/, docs/performance.md) ---------------------------------------------------
# Extra arguments for `python -m bench`, e.g. BENCH_ARGS="--payments 5000 --gateway-latency-ms 50".
BENCH_ARGS ?=

.PHONY: bench-smoke

bench: $(STAMP) ## the benchmark: the real stack, five workloads, results in bench/results (~13 min)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: $(STAMP) ## the benchmark at tiny sizes (checks the harness, ~1.5 min), results in bench/results/tmp
	$(BIN)/python -m bench --quick --out bench/results/tmp/smoke $(BENCH_ARGS)

# `make fuzz`: the CI fuzz test (tests/security/test_fuzz_api.py) with many more examples per operation.
FUZZ_MAX_EXAMPLES ?= 500
fuzz: $(STAMP) services-check ## schemathesis against the OpenAPI schema, FUZZ_MAX_EXAMPLES (500) per operation
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) \
		$(BIN)/pytest tests/security/test_fuzz_api.py -p no:cacheprovider --timeout=0 $(PYTEST_ARGS)
