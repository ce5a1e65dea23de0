"""The function app on a started local host (HTTP on a socket), the SQLite queue and store and the
compute twin, for the client's tests."""

from __future__ import annotations

import pytest

from shared.composition import build
from shared.localhost import LocalHost
from shared.settings import Settings

CARTPOLE = {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"episode_reward_mean": 150}}


@pytest.fixture
def settings(monkeypatch, tmp_path) -> Settings:
    for k, v in {
        "RLQ_BACKEND": "twin",
        "RLQ_BROKER": "sqlite",
        "RLQ_STORE": "sqlite",
        "RLQ_POLL_SCHEDULE": "*/1 * * * * *",
        "RLQ_DATA_DIR": str(tmp_path / "rlq"),
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def serve(settings):
    """``serve(timers=True, port=0)``: the function app on a started LocalHost; stopped at the end."""
    hosts: list[LocalHost] = []

    def start(*, timers: bool = True, port: int = 0) -> tuple[LocalHost, object]:
        w = build(settings)
        host = LocalHost.for_wiring(w, http_port=port)
        host.start(timers=timers)
        hosts.append(host)
        return host, w

    yield start
    for host in hosts:
        host.close()
