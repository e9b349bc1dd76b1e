# Esker: thin aliases. `make run` starts the embedded hub; `make test` runs the whole suite.
# Everything the project needs is installed by these targets on a fresh Debian machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
PYTEST_ARGS ?=
# The proxy npm installs, for `esker run` and the hubs the tests start (esker.app.deployment.proxy_command).
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: help install run stop test test-unit bench docs check clean images

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(VENV)/.installed: pyproject.toml images/esker-client/pyproject.toml
	sh scripts/install-system.sh base
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(UV) pip install --python $(PY) -e '.[test]'
	$(UV) pip install --python $(PY) --no-deps -e images/esker-client
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed node_modules/.installed  ## venv, proxy, Java, Node (idempotent)

run: install  ## the hub on http://127.0.0.1:$${ESKER_PORT:-8000} (embedded mode)
	sh scripts/install-ceph.sh
	$(VENV)/bin/esker run

stop:  ## stop the embedded hub, its notebook servers and the proxy
	$(VENV)/bin/esker stop --all

test: install  ## the whole test suite: tests/{unit,kubernetes,hub,services,browser}
	sh scripts/install-system.sh browser broker
	sh scripts/install-ceph.sh
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-unit: install  ## only the fast tiers: tests/unit and tests/kubernetes (offline)
	$(PY) -m pytest -ra tests/unit tests/kubernetes $(PYTEST_ARGS)

bench: install  ## benchmarks, side by side; results in bench/results/
	$(PY) bench/spawn_latency.py
	$(PY) bench/storage_throughput.py
	$(PY) bench/storage_from_server.py
	$(PY) bench/data_in_place.py
	$(PY) bench/environments.py
	$(PY) bench/task_store.py
	$(PY) bench/scale.py

docs: install  ## regenerate docs/configuration.md from the schema and the traitlets help
	$(PY) -m esker.docs > docs/configuration.md

check: install  ## validate $$ESKER_CONFIG (or the shipped esker.yaml)
	$(VENV)/bin/esker check $${ESKER_CONFIG:-esker.yaml}

clean:  ## remove the venv and node_modules (state under $$ESKER_STATE_DIR is kept)
	rm -rf $(VENV) node_modules

-include images/images.mk
