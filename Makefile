# Two entry points a newcomer needs (README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/ml100k
RUN ?= runs/ml100k
# The CPU build of torch; GPU users: see README "GPU install".
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint redis clean

$(BIN)/taesar: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(BIN)/taesar

setup: $(BIN)/taesar

demo: setup
	$(BIN)/taesar data ml100k --out $(DATA)
	$(BIN)/taesar pipeline --data $(DATA) --out $(RUN) --no-evaluate

redis:
	@bash .ci/ensure-redis

lint: setup
	$(BIN)/ruff check app models workers tests benchmarks
	$(BIN)/ruff format --check app models workers tests benchmarks

test: setup redis lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
