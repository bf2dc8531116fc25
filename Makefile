# The README's two set-up commands: `make serve` (run the service on the bundled default model)
# and `make test` (lint, type-check and run the test suite). Both create the virtualenv and
# install the project on a fresh machine; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install install-dev system-deps lint test serve demo clean-venv

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

# System packages the tests call (Debian): promtool (`prometheus`) for the alert-rule tests.
# kubectl (kustomize rendering of deploy/k8s) comes with this project's machines; the target
# says so when it is missing. Idempotent: installs only what is missing, and only as root.
SYSTEM_DEPS := promtool:prometheus
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
	  command -v $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "system-deps: apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "system-deps: missing$$missing (run make system-deps as root)"; fi; \
	fi
	@command -v kubectl >/dev/null 2>&1 || echo "system-deps: kubectl missing: the deploy/k8s rendering tests fail under CI"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

serve: install
	$(BIN)/deltagate serve

demo: install-dev
	$(BIN)/deltagate demo build

clean-venv:
	rm -rf $(VENV)
