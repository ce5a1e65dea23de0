"""Fixtures of the ``rlq`` CLI's tests (test_cli.py, test_cli_local.py); none is autouse."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.cli import app


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """The local mode on the compute twin, with nothing inherited from the caller's environment."""
    monkeypatch.setenv("RLQ_BACKEND", "twin")
    monkeypatch.setenv("RLQ_BROKER", "sqlite")
    monkeypatch.setenv("RLQ_STORE", "sqlite")
    monkeypatch.delenv("RLQ_DATA_DIR", raising=False)
    monkeypatch.delenv("RLQ_WEBHOOK_SECRETS", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "rlq"


@pytest.fixture
def run(data_dir):
    """``run(*args)``: ``rlq --data-dir <data_dir> *args`` through typer's runner."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["--data-dir", str(data_dir), *args], catch_exceptions=False)

    return invoke
