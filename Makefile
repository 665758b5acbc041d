# The two commands of the README. Both build their own virtual environment (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench-broker clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: serve the servicebay demo on embedded defaults (SQLite, no set-up)
run: $(STAMP)
	$(BIN)/bay demo

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
