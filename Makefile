# rlq — two commands on a fresh machine: `make run` (the demo end to end) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install browser screenshot run serve test lint bench bench-learn bench-learn-peer bench-gpu gpu-wheels soak clean

$(STAMP): pyproject.toml package.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[ray,trainer,azureml,otlp,azure,dev]'
	# Azurite (Azure Table storage emulator) for the Table run-store contract tests
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

install: $(STAMP)

# Chromium and its WebDriver (Debian: chromium, chromium-driver) for the dashboard's browser tests.
# A file target: apt runs only while /usr/bin/chromedriver is missing; sudo only when not root.
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser: $(CHROMEDRIVER)

$(CHROMEDRIVER):
	@command -v apt-get >/dev/null || { echo "no apt-get: install chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) with this system's package manager"; exit 1; }
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium chromium-driver

# The README's picture of a finished run (docs/images/dashboard-run.png), taken by the browser test
screenshot: install browser
	RLQ_DASHBOARD_SCREENSHOT=docs/images/dashboard-run.png $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/dashboard/test_browser.py -k curve_grows

run: install
	$(BIN)/rlq demo

serve: install
	$(BIN)/rlq serve

test: install browser
	$(BIN)/python -m pytest -q

# ruff (check + format, complexity included) and mypy (pyproject's [tool.mypy]: shared/, functions/,
# function_app.py, trainer/) on Python, then checkov on infra/ (Bicep) in its own venv (.venv-lint/)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	bash infra/lint.sh

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/service_throughput.py
	$(BIN)/python bench/trainer_throughput.py
	$(BIN)/python bench/cartpole_time_to_450.py
	$(BIN)/python bench/enqueue_to_first.py
	$(BIN)/python bench/sac_dqn_targets.py

# Pong learning proof: the Pong preset for 2M agent steps (about 2 h on 2 cores); curve CSV + PNG
bench-learn: install
	$(BIN)/python bench/pong_learning.py

# Pong learning with the peer a user would pick instead (CleanRL's PPO + EnvPool), same budget,
# same cores, one after the other; both curves in one figure
bench-learn-peer: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/pong_learning.py --peer cleanrl-envpool

# The GPU figure (one GPU, 16 cores, under 10 minutes): the seed's request to 18 or 300 s, then
# sampling-only scaling with 1-15 EnvRunners. Budgets by env (see the script); on a CUDA image
# without this venv it installs the wheels `make gpu-wheels` put in outputs/wheels/.
bench-gpu:
	bash bench/gpu_pong.sh

# Wheels for a CUDA image's Python 3.12 that has torch but not ray/gymnasium/ale-py (bench/gpu_pong.sh),
# into outputs/wheels/, small enough for one 64 MiB carry (ray's wheel repacked; see the script)
gpu-wheels:
	$(PY) bench/gpu_wheels.py

# The full load and soak suites (CI runs reduced forms in tests/guarantees and tests/e2e)
soak: install
	$(BIN)/python bench/load_soak.py
	$(BIN)/python bench/fd_soak.py

clean:
	rm -rf .rlq outputs .pytest_cache
