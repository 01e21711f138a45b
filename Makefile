# The two commands: `make up` runs corral on this host, `make test` runs every test (one
# worker a CPU; a test file's tests stay together on one worker, with their fixtures).
.PHONY: up test setup setup-test lint bench

up: setup
	scripts/up

test: setup-test
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
	.venv/bin/pytest -n auto --dist loadfile

setup:
	scripts/setup

# The tests also need what users of corral do not: a PostgreSQL server for the store tests.
setup-test:
	scripts/setup --test

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run_all.py
