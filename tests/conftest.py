"""Shared fixtures: a deterministic clock and a service wired to real embedded parts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shared.localhost.ray_head import stop_local_head
from tests.support.azurite import azurite  # noqa: F401 - the session fixture, for every suite
from tests.support.clock import FakeClock
from tests.support.ray_heads import TestHead, start_test_ray_head

os.environ.setdefault("RLQ_POLL_SCHEDULE", "*/10 * * * * *")


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
