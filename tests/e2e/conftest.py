from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shared.composition import build
from shared.localhost import LocalHost
from shared.settings import Settings
from tests.support.ray_heads import TestHead


@pytest.fixture(scope="session")
def e2e_head(ray_head: TestHead) -> TestHead:
    return ray_head


def e2e_env(head: TestHead, data_dir: Path, **extra: Any) -> dict[str, str]:
    """RLQ_* settings for a host on its own data dir, submitting to the session's head (local mode)."""
    env = {
        "RLQ_DATA_DIR": str(data_dir),
        "RLQ_BACKEND": "ray",
        "RLQ_RAY_DASHBOARD_PORT": str(head.dashboard_port),
        "RLQ_RAY_AUTH_TOKEN": head.token.get_secret_value(),
        "RLQ_POLL_SCHEDULE": "*/1 * * * * *",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def e2e_settings(e2e_head: TestHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def make(**extra: Any) -> Settings:
        for k, v in e2e_env(e2e_head, tmp_path / "rlq", **extra).items():
            monkeypatch.setenv(k, v)
        return Settings(_env_file=None)  # type: ignore[call-arg]

    return make


@pytest.fixture
def api(e2e_settings):
    """The function app on a started local host (HTTP on a socket, its own timers): the wiring and
    the base URL. Closing the host forgets the wiring it installed."""
    w = build(e2e_settings())
    host = LocalHost.for_wiring(w, http_port=0)
    host.start()
    try:
        yield w, host.base_url
    finally:
        host.close()


def subprocess_env(head: TestHead, data_dir: Path, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLQ_")}
    env.update(e2e_env(head, data_dir, **extra))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env
