"""One fake clock for every test: time moves only when the test says so.

The service and the run stores take a ``datetime`` clock (call the object); the broker and the
local host take an epoch-seconds clock (pass ``clock.epoch``). Both read the same instant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime | float | None = None) -> None:
        if isinstance(start, (int, float)):
            start = datetime.fromtimestamp(start, UTC)
        self.now: datetime = start or DEFAULT_START

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
