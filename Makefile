# The two commands a new user needs: `make demo` and `make test`. Both (re)create the local
# virtual environment when pyproject.toml changed (stamp file), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed.stamp
export WANDB_MODE ?= offline

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ltu benchmark --config configs/benchmark/fmnist5k.yaml --out runs/demo --overwrite true

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts examples
	$(BIN)/ruff format --check src tests scripts examples

format: $(STAMP)
	$(BIN)/ruff check --fix src tests scripts examples
	$(BIN)/ruff format src tests scripts examples

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
