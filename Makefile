# The README's two set-up commands: `make serve` (run the service on the bundled default model)
# and `make test` (lint, type-check and run the test suite). Both create the virtualenv and
# install the project on a fresh machine; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install install-dev lint test serve demo clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# Service only: core dependencies (no training extras).
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

demo: install-dev
	$(BIN)/deltagate demo build

clean-venv:
	rm -rf $(VENV)
