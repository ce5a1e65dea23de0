# rlq — two commands on a fresh machine: `make run` (the demo end to end) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install run serve test lint bench soak clean

$(STAMP): pyproject.toml package.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[ray,trainer,azureml,dev]'
	# Azurite (Azure Table storage emulator) for the Table run-store contract tests
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/rlq demo

serve: install
	$(BIN)/rlq serve

test: install
	$(BIN)/python -m pytest -q

# ruff (check + format) on Python, then checkov on infra/ (Bicep) in its own venv (.venv-lint/)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	bash infra/lint.sh

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/service_throughput.py
	$(BIN)/python bench/trainer_throughput.py
	$(BIN)/python bench/cartpole_time_to_450.py

# The full load and soak suites (CI runs reduced forms in tests/guarantees)
soak: install
	$(BIN)/python bench/load_soak.py

clean:
	rm -rf .rlq outputs .pytest_cache
