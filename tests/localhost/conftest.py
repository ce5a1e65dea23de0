"""Fixtures of the ``rlq`` CLI's tests (test_cli.py, test_cli_local.py) and of the host's and its
drivers' tests (a fake clock at ``T0``, a SQLite broker, the tests' own app hosted); none is autouse."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.cli import app
from shared.localhost import LocalHost
from shared.settings import Settings
from tests.localhost.hosted_app import SUB, T0, TOPIC, Q, Recorder, make_app
from tests.support.clock import FakeClock


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


# --- the host and its drivers on the tests' own function app (tests/localhost/hosted_app.py) ---


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "rlq")


@pytest.fixture
def broker(tmp_path: Path, clock: FakeClock):
    b = SqliteBroker(tmp_path / "queue.sqlite3", lock_duration_s=60, max_delivery_count=3, clock=clock.epoch)
    b.create_queue(Q)
    b.create_topic(TOPIC)
    b.create_subscription(TOPIC, SUB)
    b.create_subscription(TOPIC, "other")
    yield b
    b.close()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def no_host_json(tmp_path: Path) -> Path:
    return tmp_path / "absent-host.json"


@pytest.fixture
def host(rec, broker, settings, clock, no_host_json):
    h = LocalHost(
        make_app(rec),
        broker=broker,
        settings=settings,
        host_json=no_host_json,
        http_port=0,
        clock=clock.epoch,
    )
    yield h
    h.stop()
