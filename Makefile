# mta-lite: the only entry points are here.
#   make run    relay + capture smarthost on 127.0.0.1:2525 with sample mail (no root needed)
#   make test   install everything needed, run every test
#   make bench  smtp-source -> relay -> smtp-sink, mta-lite against Postfix
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration bench deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,demo]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mta-lite demo

deps:
	bash tools/install-test-deps.sh

test: $(STAMP) deps
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/dialogs

test-integration: $(STAMP) deps
	$(PY) -m pytest -q tests/integration

bench: $(STAMP) deps
	$(PY) tools/bench/relay_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
