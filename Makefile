# Two entry points a newcomer needs (README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/ml100k
RUN ?= runs/ml100k
# The CPU build of torch; GPU users: see README "GPU install".
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint redis ml100k-wheel screenshots clean

# The SDK (sdk/, distribution taesar-client) is installed next to the service: the
# tests, the benchmarks and app.client use it.
$(BIN)/taesar: pyproject.toml sdk/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q -e ./sdk
	@touch $(BIN)/taesar

setup: $(BIN)/taesar

demo: setup
	$(BIN)/taesar data ml100k --out $(DATA)
	$(BIN)/taesar pipeline --data $(DATA) --out $(RUN) --no-evaluate

redis:
	@bash .ci/ensure-redis

# The RecBole wheel that ships ml-100k, in the cache `taesar data ml100k` reads (one
# 2 MB download, once): the real-data tests need it.
ml100k-wheel: setup
	$(BIN)/python -c "from cli import DEFAULT_CACHE; from models.importers import fetch_recbole_wheel; print(fetch_recbole_wheel(DEFAULT_CACHE))"

LINTED := app cli core models workers tests benchmarks sdk

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]: the layers)
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

test: setup redis lint ml100k-wheel
	$(BIN)/python -m pytest

# docs/ui-*.png, the web page's three views on `make demo`'s bundle (README shows them);
# needs Debian's chromium and Redis, and starts its own API and worker
screenshots: setup redis
	@test -f $(RUN)/bundle/manifest.json || { echo "no bundle in $(RUN)/bundle: run make demo first" >&2; exit 2; }
	$(BIN)/python -m tests.ui_screenshots --bundle $(RUN)/bundle --out docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .import_linter_cache
