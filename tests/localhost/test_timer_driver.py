"""The timer driver: schedules, past due, the singleton lock, a failing timer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from tests.localhost.hosted_app import T0


def test_timer_fires_on_its_schedule_and_reports_past_due(host, rec):
    assert host.next_due("tick") == datetime.fromtimestamp(T0 + 7, UTC)  # the next 10-second mark

    assert host.tick_timers(now=T0 + 6.9) == []
    assert host.tick_timers(now=T0 + 7) == ["tick"]
    assert host.tick_timers(now=T0 + 7.5) == []  # once per occurrence
    assert rec.timer_calls[0].past_due is False

    # 20 s late: fires once (missed occurrences collapse into one), marked past due
    assert host.tick_timers(now=T0 + 37) == ["tick"]
    assert rec.timer_calls[1].past_due is True
    assert host.next_due("tick") == datetime.fromtimestamp(T0 + 47, UTC)
    assert [i.outcome for i in host.invocations] == ["ok", "ok"]


def test_timer_never_runs_concurrently_with_itself(host, rec):
    inside, gate = threading.Event(), threading.Event()

    def hold(timer):
        inside.set()
        gate.wait(10)

    rec.timer_behaviour = hold
    first = threading.Thread(target=host.tick_timers, kwargs={"now": T0 + 7})
    first.start()
    try:
        assert inside.wait(10)
        assert host.tick_timers(now=T0 + 17) == []  # due, but still running: skipped
        assert len(rec.timer_calls) == 1
    finally:
        gate.set()
        first.join(10)
    rec.timer_behaviour = None
    assert host.tick_timers(now=T0 + 18) == ["tick"]  # fires late once the first run is done
    assert rec.timer_calls[1].past_due is True


def test_a_failing_timer_is_logged_and_fires_again_next_time(host, rec):
    rec.timer_behaviour = lambda timer: 1 / 0

    assert host.tick_timers(now=T0 + 7) == ["tick"]
    assert host.tick_timers(now=T0 + 17) == ["tick"]
    assert [(i.outcome, i.error) for i in host.invocations] == [
        ("error", "ZeroDivisionError: division by zero")
    ] * 2
