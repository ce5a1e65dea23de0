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
	$(BIN)/pip install -q -e '.[ray,trainer,azureml,dev]'
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
	$(BIN)/python bench/enqueue_to_first.py

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

# Wheels for a CUDA image's Python 3.12 that has torch but not ray/gymnasium/ale-py (bench/gpu_pong.sh);
# the versions this venv runs the trainer with
GPU_WHEELS := ray==2.60.0 gymnasium==1.2.2 farama-notifications==0.0.6 ale-py==0.12.1 dm-tree==0.1.10 \
	lz4==4.4.5 ormsgpack==1.13.1 tensorboardx==2.6.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
	referencing==0.37.0 rpds-py==2026.9.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d outputs/wheels $(GPU_WHEELS)
	# ray's wheel (79 MB) recompressed with LZMA (pip reads it) so all of them fit a 64 MiB carry
	$(PY) -c 'import sys, zipfile; s = sys.argv[1]; d = s + ".lzma"; zi = zipfile.ZipFile(s); zo = zipfile.ZipFile(d, "w", zipfile.ZIP_LZMA); [zo.writestr(i, zi.read(i), zipfile.ZIP_LZMA) for i in zi.infolist()]; zo.close()' outputs/wheels/ray-2.60.0-*.whl
	for f in outputs/wheels/ray-2.60.0-*.whl; do mv "$$f.lzma" "$$f"; done
	du -sh outputs/wheels

# The full load and soak suites (CI runs reduced forms in tests/guarantees and tests/e2e)
soak: install
	$(BIN)/python bench/load_soak.py
	$(BIN)/python bench/fd_soak.py

clean:
	rm -rf .rlq outputs .pytest_cache
