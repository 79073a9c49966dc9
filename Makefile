# The two commands a new user needs: `make demo` and `make test`. Both (re)create the local
# virtual environment when pyproject.toml changed (stamp file), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed.stamp
# What a fresh .venv takes on disk (measured: 6.2 GB with the dev extras), in KiB.
VENV_KB := 6500000
export WANDB_MODE ?= offline

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || [ "$$(df -Pk . | awk 'NR==2 {print $$4}')" -ge $(VENV_KB) ] || \
		echo "warning: the environment needs about 6 GB (torch with its CUDA libraries) and only $$(df -Ph . | awk 'NR==2 {print $$4}') is free here: free some disk first if pip stops with 'No space left on device'" >&2
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
