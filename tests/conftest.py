"""Shared fixtures: a deterministic clock and a service wired to real embedded parts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.ray_local import stop_local_head
from tests.support.ray_heads import TestHead, start_test_ray_head

os.environ.setdefault("RLQ_POLL_SCHEDULE", "*/10 * * * * *")


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def epoch(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHead]:
    """One real local Ray head (token auth on) for the whole test session."""
    head = start_test_ray_head(tmp_path_factory.mktemp("ray-head"), num_cpus=2)
    try:
        yield head
    finally:
        stop_local_head(data_dir=head.data_dir)
