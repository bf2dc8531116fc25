# The README's two set-up commands: `make serve` (run the service on the bundled default model)
# and `make test` (lint, type-check and run the test suite). Both create the virtualenv and
# install the project on a fresh machine; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install install-dev system-deps lint test serve demo loadtest clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# Service only: the core dependencies, ONNX-only serving (no torch; `pip install -e '.[torch]'` adds
# the torch engine). The default engine (auto) serves the default bundle's int8 graph, whose recorded
# parity with model.onnx passes (docs/bundle.md, "Which graph engine=auto serves").
$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# Everything: training, load-test and development extras.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $@ $(VENV)/.installed-core

install: $(VENV)/.installed-core
install-dev: $(VENV)/.installed-dev

# System packages the tests need, installed with apt-get only when missing and only as root (CI
# runs as root; elsewhere it says what is missing, and the tests that need it skip outside CI).
# chromium: the UI's browser tests (tests/e2e/test_ui_browser.py).
# prometheus: its promtool checks and unit-tests the alert rules (tests/unit/deploy/test_alerts.py).
# podman, runc, debootstrap: the images built and run on a real engine (tests/container, marker
# `container`): podman with runc (deploy/containers/containers.conf says why not its default
# crun), debootstrap for the stand-in base image where no image registry can be reached.
# kubectl (kustomize rendering of deploy/k8s, tests/unit/deploy/test_k8s.py) comes with this
# project's machines (no Debian package has a recent enough kustomize); the target says when it
# is missing.
SYSTEM_PACKAGES ?= chromium prometheus podman runc debootstrap

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	  | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "system-deps: $(SYSTEM_PACKAGES) installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "system-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "system-deps: missing$$missing (run 'make system-deps' as root)"; fi
	@command -v kubectl >/dev/null 2>&1 || echo "system-deps: kubectl missing: tests/unit/deploy/test_k8s.py fails under CI"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

serve: install
	$(BIN)/deltagate serve

# Bounded headless Locust run on the default bundle (a fresh server on 127.0.0.1:$(LOADTEST_PORT));
# fails on any failed request or a p99 above the bound (loadtests/run.py, docs/operations.md).
LOADTEST_PORT ?= 8010
LOADTEST_ARGS ?=
loadtest: install-dev
	$(BIN)/python loadtests/run.py --port $(LOADTEST_PORT) $(LOADTEST_ARGS)

# The demo pipeline (docs/offline.md §7). Writes under runs/demo/ only; `make demo PUBLISH=1` replaces the
# bundled default model (bundles/default) and the committed results/ (tracked files).
PUBLISH ?=
demo: install-dev
	$(BIN)/deltagate demo build $(if $(PUBLISH),--publish)

clean-venv:
	rm -rf $(VENV)
