# rlq — two commands on a fresh machine: `make run` (the demo end to end) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install run test bench clean serve lint

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[ray,trainer,azureml,dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/rlq demo

serve: install
	$(BIN)/rlq serve

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/service_throughput.py
	$(BIN)/python bench/trainer_throughput.py
	$(BIN)/python bench/cartpole_time_to_450.py

clean:
	rm -rf .rlq outputs .pytest_cache
