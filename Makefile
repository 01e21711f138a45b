# The two commands: `make up` runs corral on this host, `make test` runs every test.
.PHONY: up test setup lint bench

up: setup
	scripts/up

test: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
	.venv/bin/pytest

setup:
	scripts/setup

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run_all.py
