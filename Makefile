# Developer entry points. `make test` is the one command CI runs (through .ci/run).
PYTHON ?= python3
SERVICES := tests/services
RUN_DIR ?= $(or $(AGENTSTREAM_RUN),/tmp/agentstream-services)
export AGENTSTREAM_RUN := $(RUN_DIR)

# Where the tests find the real services that `services-up` starts.
TEST_ENV = AGENTSTREAM_TEST_KAFKA=127.0.0.1:$${KAFKA_PORT:-19092} \
           AGENTSTREAM_TEST_REGISTRY=$$(cat $(RUN_DIR)/registry/url) \
           AGENTSTREAM_TEST_CASSANDRA=127.0.0.1:$${CASSANDRA_PORT:-19042} \
           AGENTSTREAM_TEST_WEAVIATE=127.0.0.1:$${WEAVIATE_PORT:-18080}:$${WEAVIATE_GRPC_PORT:-18051} \
           OPENBLAS_NUM_THREADS=1

.PHONY: setup sandbox-deps local-model demo lint test test-unit bench services-up services-down codegen

setup: local-model sandbox-deps  ## install agentstream with every extra the tests use, and fetch the services
	$(PYTHON) -m pip install --disable-pip-version-check -q -e '.[dev,kafka,cassandra,memory,weaviate]'
	bash $(SERVICES)/kafka.sh install
	bash $(SERVICES)/registry.sh install
	bash $(SERVICES)/weaviate.sh install
	bash $(SERVICES)/cassandra.sh install

sandbox-deps:  ## bubblewrap and Debian's python3 for the local sandbox (apt, only when missing)
	@command -v bwrap >/dev/null && test -x /usr/bin/python3 || \
		{ apt-get update -qq && apt-get install -y -qq bubblewrap python3-minimal; }

local-model:  ## llama-cpp-python (built once, cached) and the offline model weights
	bash $(SERVICES)/local_model.sh install

demo: local-model  ## install and run a real agent task with the local model: no key, no service
	$(PYTHON) -m pip install --disable-pip-version-check -q -e .
	agentstream run "What is 1234 * 5678? Use the calculator."

lint:  ## ruff, formatting, strict types, the one-way import rule, generated code, schema evolution
	ruff check .
	ruff format --check .
	mypy
	lint-imports
	$(PYTHON) -m streams.codegen --check
	agentstream schemas check

services-up:  ## start Kafka, the schema registry, Cassandra and Weaviate on loopback
	bash $(SERVICES)/kafka.sh up
	bash $(SERVICES)/registry.sh up
	bash $(SERVICES)/cassandra.sh up
	bash $(SERVICES)/weaviate.sh up

services-down:
	-bash $(SERVICES)/weaviate.sh down
	-bash $(SERVICES)/cassandra.sh down
	-bash $(SERVICES)/registry.sh down
	-bash $(SERVICES)/kafka.sh down

test: services-up  ## the whole suite against the real services, with coverage
	$(TEST_ENV) $(PYTHON) -m pytest --cov --cov-report=term --cov-report=xml

test-unit:  ## the fast suite: no services needed
	$(PYTHON) -m pytest -m unit -q

bench:  ## benchmarks (results go in docs/benchmarks.md by hand, with the machine)
	$(PYTHON) benchmarks/bench_backbone.py codec
	$(PYTHON) benchmarks/bench_backbone.py worker
	$(PYTHON) benchmarks/bench_backbone.py worker --log kafka://127.0.0.1:$${KAFKA_PORT:-19092}

codegen:  ## regenerate streams/events.py from schemas/avro
	$(PYTHON) -m streams.codegen
