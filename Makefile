# Developer entry points. `make test` is the one command CI runs (through .ci/run).
#
# Everything runs in a virtualenv, never in the system's Python: the active one
# ($VIRTUAL_ENV) if there is one, else .venv here, made on first use (or pass VENV=DIR).
# Installs are pinned by constraints.txt and done again only when pyproject.toml or
# constraints.txt change (a stamp file in the venv, named by their checksum).
BOOTSTRAP_PYTHON ?= python3
VENV := $(or $(VIRTUAL_ENV),$(CURDIR)/.venv)
PYTHON := $(VENV)/bin/python
PIP = $(PYTHON) -m pip --disable-pip-version-check
export PATH := $(VENV)/bin:$(PATH)
# tests/services/local_model.sh installs into this interpreter.
export PYTHON

# Every extra the tests use. `local` (llama-cpp-python) is built by `make local-model`.
EXTRAS := dev,kafka,cassandra,memory,weaviate,k8s,gateway
DEPS_KEY := $(shell cat pyproject.toml constraints.txt 2>/dev/null | cksum | cut -d' ' -f1)
DEPS_STAMP := $(VENV)/.agentstream-deps-$(DEPS_KEY)
BASE_STAMP := $(VENV)/.agentstream-base-$(DEPS_KEY)

SERVICES := tests/services
RUN_DIR ?= $(or $(AGENTSTREAM_RUN),/tmp/agentstream-services)
export AGENTSTREAM_RUN := $(RUN_DIR)

# Where the tests find the real services that `services-up` starts.
TEST_ENV = AGENTSTREAM_TEST_KAFKA=127.0.0.1:$${KAFKA_PORT:-19092} \
           AGENTSTREAM_TEST_REGISTRY=$$(cat $(RUN_DIR)/registry/url) \
           AGENTSTREAM_TEST_CASSANDRA=127.0.0.1:$${CASSANDRA_PORT:-19042} \
           AGENTSTREAM_TEST_WEAVIATE=127.0.0.1:$${WEAVIATE_PORT:-18080}:$${WEAVIATE_GRPC_PORT:-18051} \
           AGENTSTREAM_TEST_HELM=$$(bash $(SERVICES)/helm.sh path) \
           AGENTSTREAM_TEST_K8S=$(RUN_DIR)/k8s/kubeconfig \
           OPENBLAS_NUM_THREADS=1

.PHONY: venv deps setup services-install sandbox-deps browser local-model demo lint test test-unit \
        bench services-up services-down codegen constraints

venv:  ## the virtualenv everything runs in (made only when missing)
	@test -x $(PYTHON) || { echo "creating virtualenv $(VENV)"; $(BOOTSTRAP_PYTHON) -m venv $(VENV); }

deps: $(DEPS_STAMP)  ## agentstream (editable) with every extra the tests use, pinned

$(DEPS_STAMP): | venv
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.agentstream-deps-*
	@touch $@

# The base package alone (for the demo); nothing to do when `deps` already installed it.
$(BASE_STAMP): | venv
	@test -e $(DEPS_STAMP) || $(PIP) install -q -c constraints.txt -e .
	@rm -f $(VENV)/.agentstream-base-*
	@touch $@

setup: deps local-model sandbox-deps browser services-install  ## everything `make test` needs (quick when done)

services-install:  ## build or download the services once (cached under ~/.cache/agentstream)
	bash $(SERVICES)/kafka.sh install
	bash $(SERVICES)/registry.sh install
	bash $(SERVICES)/weaviate.sh install
	bash $(SERVICES)/cassandra.sh install
	bash $(SERVICES)/helm.sh install
	bash $(SERVICES)/k8s.sh install

sandbox-deps:  ## bubblewrap and Debian's python3 for the local sandbox (apt, only when missing)
	@command -v bwrap >/dev/null && test -x /usr/bin/python3 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bubblewrap python3-minimal; }

browser:  ## Debian's chromium, which the web console's browser tests drive (Playwright never downloads one)
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

local-model: $(BASE_STAMP)  ## llama-cpp-python (built once, cached) and the offline model weights
	bash $(SERVICES)/local_model.sh install

demo: local-model  ## install and run a real agent task with the local model: no key, no service
	agentstream run "What is 1234 * 5678? Use the calculator."

lint: deps  ## ruff, formatting, strict types, the one-way import rule, generated code, schema evolution
	ruff check .
	ruff format --check .
	mypy
	lint-imports
	$(PYTHON) -m streams.codegen --check
	agentstream schemas check

services-up:  ## start Kafka, the schema registry, Cassandra, Weaviate and Kubernetes on loopback
	bash $(SERVICES)/kafka.sh up
	bash $(SERVICES)/registry.sh up
	bash $(SERVICES)/cassandra.sh up
	bash $(SERVICES)/weaviate.sh up
	bash $(SERVICES)/k8s.sh up

services-down:
	-bash $(SERVICES)/k8s.sh down
	-bash $(SERVICES)/weaviate.sh down
	-bash $(SERVICES)/cassandra.sh down
	-bash $(SERVICES)/registry.sh down
	-bash $(SERVICES)/kafka.sh down

# Prerequisites run in order: setup, then the services.
test: setup services-up  ## the whole suite against the real services, with coverage
	$(TEST_ENV) $(PYTHON) -m pytest --cov --cov-report=term --cov-report=xml

test-unit: deps  ## the fast suite: no services needed
	$(PYTHON) -m pytest -m unit -q

bench: deps  ## benchmarks (results go in docs/benchmarks.md by hand, with the machine)
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS),bench]'
	$(PYTHON) benchmarks/bench_backbone.py codec
	$(PYTHON) benchmarks/bench_backbone.py worker
	$(PYTHON) benchmarks/bench_backbone.py worker --log kafka://127.0.0.1:$${KAFKA_PORT:-19092}
	$(PYTHON) benchmarks/bench_concurrency.py slow-neighbour
	$(PYTHON) benchmarks/bench_concurrency.py many-runs --runs 2000

codegen: deps  ## regenerate streams/events.py from schemas/avro
	$(PYTHON) -m streams.codegen

# A fresh resolution of every extra in an empty virtualenv, frozen: run it after changing
# dependencies in pyproject.toml, and commit constraints.txt.
constraints:  ## regenerate constraints.txt (exact pins of every extra but `local`)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BOOTSTRAP_PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check '.[$(EXTRAS)]'; \
	{ echo "# Exact pins of agentstream's dependencies with the extras $(EXTRAS), resolved"; \
	  echo "# in an empty virtualenv by \`make constraints\` (Python $$("$$tmp/venv/bin/python" -c \
	    'import platform; print(platform.python_version())')). Used as pip install -c constraints.txt."; \
	  "$$tmp/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude agentstream; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pins"
