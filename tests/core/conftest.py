from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.composition import Wiring, build
from shared.settings import Settings
from tests.support.notifiers import RecordingNotifier


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """What a test module sets on top of :func:`settings` (the module overrides this fixture)."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    (tmp_path / "rlq").mkdir()
    defaults: dict[str, Any] = {
        "data_dir": tmp_path / "rlq",
        "backend": "twin",
        "max_in_flight": 100,
        "lock_duration_s": 60,
        "stall_timeout_s": 600,
        "poll_concurrency": 8,
    }
    return Settings(**{**defaults, **settings_overrides})


@pytest.fixture
def twin(tmp_path: Path) -> ComputeTwin:
    return ComputeTwin(tmp_path / "twin.sqlite3", polls_to_finish=2)


@pytest.fixture
def wired(settings: Settings, twin: ComputeTwin, clock) -> Wiring:
    broker = SqliteBroker(
        settings.data_dir / "queue.sqlite3", clock=clock.epoch, lock_duration_s=settings.lock_duration_s
    )
    return build(
        settings,
        compute={"twin": twin},
        notifier=RecordingNotifier(),
        broker=broker,
        clock=clock,
        faults=None,
    )
