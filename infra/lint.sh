#!/usr/bin/env bash
# Lint the Bicep in infra/ with checkov, from its own virtualenv (.venv-lint/): checkov pins
# versions that conflict with the app's. Skips, each with its reason, are in infra/.checkov.yaml.
#
#   bash infra/lint.sh          # installs checkov on first use, then runs it
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-lint
CHECKOV_VERSION=3.3.30
PY=${PY:-python3}

if [ ! -x "$VENV/bin/checkov" ] || ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  "$PY" -m venv "$VENV"
  printf '*\n' > "$VENV/.gitignore"   # never committed, whatever the repo's .gitignore says
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "checkov==$CHECKOV_VERSION"
fi

exec "$VENV/bin/checkov" --config-file infra/.checkov.yaml
