# The two commands of the README. Both build their own virtual environment (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench bench-broker bench-platform bench-rabbitmq bench-chat clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: serve the servicebay demo on embedded defaults (SQLite, no set-up)
run: $(STAMP)
	$(BIN)/bay demo $(ARGS)

## test: lint, type-check, dependency contracts, then the whole test suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmarks' own environment: ours plus the peers we compare against (never in .venv).
BENCH := benchmarks/.venv
$(BENCH)/.installed: pyproject.toml benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/pip install --quiet --upgrade pip
	$(BENCH)/bin/pip install --quiet -e . -r benchmarks/requirements.txt
	touch $@

## bench-broker: the SDK's sandbox broker side by side with an openbrokerapi equivalent
bench-broker: $(BENCH)/.installed
	$(BENCH)/bin/python benchmarks/broker_sdk.py $(BENCH_ARGS)

## bench-platform: lifecycle through the platform vs straight to the broker; listing 10,000 instances
bench-platform: $(STAMP)
	$(BIN)/python benchmarks/platform/lifecycle.py --cycles 200 --concurrency 16 \
	    --pg postgresql://postgres@127.0.0.1:5432/test $(BENCH_ARGS)

## bench-rabbitmq: the RabbitMQ broker vs the raw management API calls it makes
bench-rabbitmq: $(STAMP)
	$(BIN)/python benchmarks/rabbitmq/bench_rabbitmq.py --rounds 4 --seconds 5 --concurrency 1 4 $(BENCH_ARGS)

## bench-chat: chat delivery vs each store's raw ceiling (embedded SQLite, then RabbitMQ)
bench-chat: $(STAMP)
	$(BIN)/python benchmarks/chat/bench_chat.py --receivers 10,100 --rate 500
	$(BIN)/python benchmarks/chat/bench_chat_rabbitmq.py --receivers 10,100 --rate 500

## bench: every benchmark above, one after the other
bench: bench-broker bench-platform bench-rabbitmq bench-chat

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
