"""The timer trigger driver: NCRONTAB schedules, run-on-startup, a singleton lock, past-due marks.

A timer still running when it is due again is skipped and stays due (the Functions host's
singleton lock), so it fires late, marked past due, once the first run is done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from azure.functions.timer import TimerRequest

from shared.localhost.bindings import HostedFunction, Invocation, call_function, describe_error

PAST_DUE_AFTER_S = 1.0  # a timer invocation this late (or later) is reported as past due

Record = Callable[..., Invocation]
Submit = Callable[..., None]


class TimerDriver:
    """Drives the app's timer triggers (``functions``) on ``clock``."""

    def __init__(
        self,
        functions: list[HostedFunction],
        *,
        clock: Callable[[], float],
        record: Record,
        stopping: threading.Event,
    ) -> None:
        self.functions = functions
        self._clock = clock
        self._record = record
        self._stopping = stopping
        start = clock()
        for t in functions:
            assert t.schedule is not None
            t.next_due = start if t.run_on_startup else t.schedule.next_after(start)

    def next_due(self, name: str) -> datetime:
        """When timer function ``name`` fires next."""
        for t in self.functions:
            if t.name == name:
                return datetime.fromtimestamp(t.next_due, UTC)
        raise KeyError(f"no timer function named {name!r}")

    def tick(self, at: float) -> list[str]:
        """Run, on this thread, every timer due at ``at``; returns the names that ran."""
        ran = []
        for t in self.functions:
            if at < t.next_due or not t.running.acquire(blocking=False):
                continue
            due = t.next_due
            try:
                assert t.schedule is not None
                t.next_due = t.schedule.next_after(at)
                self._run(t, due=due, now=at)
            finally:
                t.running.release()
            ran.append(t.name)
        return ran

    def loop(self, submit: Submit) -> None:
        """Hand every due timer to ``submit`` (the host's worker pool) until the host stops."""
        while not self._stopping.is_set():
            now = self._clock()
            for t in self.functions:
                if now >= t.next_due and t.running.acquire(blocking=False):
                    due = t.next_due
                    assert t.schedule is not None
                    t.next_due = t.schedule.next_after(now)
                    submit(self._run, t, due, now, release=t.running.release)
            wait = min((t.next_due for t in self.functions), default=now + 1.0) - self._clock()
            self._stopping.wait(min(max(wait, 0.01), 1.0))

    def _run(self, t: HostedFunction, due: float, now: float) -> Invocation:
        t0 = time.perf_counter()
        request = TimerRequest(
            past_due=now - due >= PAST_DUE_AFTER_S,
            schedule_status={"Last": _iso(due), "Next": _iso(t.next_due), "LastUpdated": _iso(now)},
            schedule={"AdjustForDST": True},
        )
        try:
            call_function(t, request, {})
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            return self._record(t, "error", t0, error=describe_error(err))
        return self._record(t, "ok", t0)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
