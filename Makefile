# Opsline — the two commands are `make run` and `make test`.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.8
UV := .uv/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint format migrate bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PY) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(BIN)/opsline: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --inexact --python $(PY)
	@touch $@

install: $(BIN)/opsline ## Create the virtual environment and install the locked dependencies

run: install ## Migrate, load the demo tenant and serve on http://127.0.0.1:8000 (embedded)
	$(BIN)/opsline migrate
	$(BIN)/opsline demo
	exec $(BIN)/opsline serve

test: install ## Run the whole suite (PostgreSQL/Redis suites when OPSLINE_TEST_* are set)
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: install ## The suite without the multi-process scenarios
	$(BIN)/pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff (lint + format check), mypy on src/, import contracts
	$(BIN)/ruff check src tests bench migrations
	$(BIN)/ruff format --check src tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install ## Format and autofix
	$(BIN)/ruff format src tests bench migrations
	$(BIN)/ruff check --fix src tests bench migrations

migrate: install ## Bring the database schema to the newest revision
	$(BIN)/opsline migrate

bench: install ## Run every benchmark quickly (JSON on the last line of each)
	$(UV) sync --frozen --inexact --all-groups --python $(PY)
	@for script in bench/*.py; do case $$script in bench/_*) continue;; esac; \
		name=$$(basename $$script .py); echo "== bench.$$name"; \
		$(BIN)/python -m bench.$$name --quick || exit 1; done

clean: ## Remove the environments and local data
	rm -rf .uv $(VENV) var .pytest_cache .mypy_cache .ruff_cache
