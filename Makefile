# Set-up and everyday commands. Everything installs itself into .venv on a fresh machine.
# TORCH pins the torch requirement: the default is a CPU build; a GPU user runs e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.voxseg-installed
LINT_STAMP := $(VENV)/.voxseg-lint-installed
LINT_PATHS := src tests benchmarks examples
DEMO_DIR ?= voxseg_demo
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/voxseg demo -o $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff and mypy (pinned in the lint extra) with the settings in pyproject.toml; mypy needs the runtime
# dependencies installed to see their types, hence $(STAMP) first.
$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[lint]"
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
