# Sterling's two commands: `make demo` and `make test`. Both do all set-up
# themselves on a fresh machine (virtual environment, pip, npm and Debian
# packages) and are quick when nothing changed: each step leaves a stamp that
# is newer than the files it depends on.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMPS := .make
# Debian packages the project needs: chromium for the browser tests (driven by Playwright) and
# postgresql for the index's PostgreSQL tests (the tests start their own server on loopback).
DEBS   := chromium postgresql
PYTEST_ARGS ?=

.PHONY: help setup demo test lint typecheck unit bench clean

help:
	@echo "make demo    run the end-to-end demo (sets everything up first)"
	@echo "make test    install everything, lint, type-check and run every test"
	@echo "make bench   run every benchmark and print its figures"
	@echo "make clean   remove the virtual environment, node_modules and stamps"

setup: $(STAMPS)/python $(STAMPS)/node $(STAMPS)/web $(STAMPS)/debian

$(STAMPS):
	mkdir -p $(STAMPS)

$(STAMPS)/debian: Makefile | $(STAMPS)
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	touch $@

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMPS)/python: $(BIN)/python pyproject.toml requirements.lock | $(STAMPS)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

# `npm ci` refuses this lock file (npm 11 leaves out other platforms' optional
# binaries), so install from it with `npm install`, which keeps it as it is.
$(STAMPS)/node: package.json package-lock.json | $(STAMPS)
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# The web app's pages: CodeMirror, Chart.js and Sterling's own scripts, bundled by esbuild (all from npm)
# into src/sterling/web/static/dist, which `sterling serve` serves; nothing is fetched at run time.
WEB_SRC := $(wildcard web/src/* web/build.mjs)
$(STAMPS)/web: $(STAMPS)/node $(WEB_SRC) | $(STAMPS)
	node web/build.mjs
	touch $@

demo: setup
	$(BIN)/sterling demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck
	$(BIN)/sterling chain compile --check
	$(BIN)/pytest -q -n 2 --timeout=600 --durations=15 -m "not browser" $(PYTEST_ARGS)
	@# Playwright's sync API keeps an event loop running in its process, which FastAPI's TestClient
	@# refuses to share: the browser tests run in a pytest of their own.
	$(BIN)/pytest -q --timeout=600 --durations=5 -m browser $(PYTEST_ARGS)

bench: setup
	@for b in $$($(BIN)/sterling bench list); do $(BIN)/sterling bench $$b; done

clean:
	rm -rf $(VENV) node_modules $(STAMPS)
