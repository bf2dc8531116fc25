# The README's two set-up commands: `make serve` (run the service on the bundled default model)
# and `make test` (lint, type-check and run the test suite). Both create the virtualenv and
# install the project on a fresh machine; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install install-dev lint test serve demo loadtest clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# Service only: the core dependencies, ONNX-only serving (no torch; `pip install -e '.[torch]'` adds
# the torch engine). The default engine (auto) serves the default bundle's model.onnx.
$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# Everything: training, load-test and development extras.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $@ $(VENV)/.installed-core

install: $(VENV)/.installed-core
install-dev: $(VENV)/.installed-dev

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

serve: install
	$(BIN)/deltagate serve

# Bounded headless Locust run on the default bundle (a fresh server on 127.0.0.1:$(LOADTEST_PORT));
# fails on any failed request or a p99 above the bound (loadtests/run.py, docs/operations.md).
LOADTEST_PORT ?= 8010
LOADTEST_ARGS ?=
loadtest: install-dev
	$(BIN)/python loadtests/run.py --port $(LOADTEST_PORT) $(LOADTEST_ARGS)

demo: install-dev
	$(BIN)/deltagate demo build

clean-venv:
	rm -rf $(VENV)
