# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-quick test-fast test-faults lint format proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Everything on one machine: embedded NATS + Redis, bridge, worker, Flower, demo orders.
run: install
	$(BIN)/orders run

## The whole suite: unit, integration and end-to-end tests against real servers.
test: install
	$(BIN)/python -m pytest

## Unit tests only (no servers).
test-quick: install
	$(BIN)/python -m pytest -m unit

## Everything but the slow fault-injection tests (a few minutes).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

## Only the fault-injection suite (real processes killed, servers restarted, partitions).
test-faults: install
	$(BIN)/python -m pytest tests/faults

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate the committed protobuf code from proto/ (a test checks they match).
proto: install
	$(BIN)/python -m grpc_tools.protoc --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy -I proto --python_out=bridge/pb --mypy_out=bridge/pb proto/orders/v1/orders.proto

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
