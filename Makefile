# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock run test test-quick test-fast test-faults bench lint typecheck format proto contract screenshot clean

install: $(STAMP)

# The locked versions (requirements/dev.lock, `make lock`), then the package itself.
$(STAMP): pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## Everything on one machine: embedded NATS + Redis, bridge, worker, Flower, demo orders.
run: install
	$(BIN)/orders run

## The whole suite: unit, integration and end-to-end tests against real servers. It
## includes `make contract`'s checks: pytest collects the same tests (tests/unit/test_contract_*.py).
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

## The benchmark (README, Performance): own servers and processes, about ten minutes on two
## cores, and nothing else running. Figures to bench-results.json, plot to docs/bench.png;
## e.g. `make bench BENCH_ARGS=--quick` for a smoke run.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/orders bench --json bench-results.json --plot docs/bench.png $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## Static types: mypy --strict over orders/, bridge/ and dev/ (pyproject.toml, [tool.mypy]).
typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate the committed protobuf code from proto/ (a test checks they match).
proto: install
	$(BIN)/python -m grpc_tools.protoc --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy -I proto --python_out=bridge/pb --mypy_out=bridge/pb proto/orders/v1/orders.proto

## The NATS contract as its ecosystem reads it (README, The external contract): buf lint,
## format and breaking (against proto/baseline/orders-v1.json, the released orders.v1) over
## proto/, then the tests that run those checks, prove the breaking check catches a
## renumbered or retyped field, validate asyncapi.yaml against the AsyncAPI 3.0 schema,
## check every name in it against the code, and compare bridge/pb with `make proto`'s
## output. `make test` (and so .ci/run) runs the same tests.
contract: install
	$(BIN)/buf lint proto
	$(BIN)/buf format proto --diff --exit-code
	$(BIN)/buf breaking proto --against proto/baseline/orders-v1.json
	$(BIN)/python -m pytest -q tests/unit/test_contract_buf.py tests/unit/test_contract_asyncapi.py \
		tests/unit/test_proto_generated.py

## Flower's tasks and workers pages as docs/flower-*.png, from a `make run` with its demo
## orders (needs Chromium: apt-get install chromium).
screenshot: install
	$(BIN)/python -m pip install --quiet -e '.[screenshot]'
	$(BIN)/python scripts/flower_screenshot.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info

## Re-resolve requirements/*.lock from pyproject.toml (uv; every platform, Python 3.11+).
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --upgrade -o requirements/runtime.lock
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --upgrade --extra dev -o requirements/dev.lock
