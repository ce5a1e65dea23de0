"""The queue driver: peek-lock receive, complete, abandon, dead-letter, outputs, lock renewal and
``maxConcurrentCalls``, through :class:`LocalHost` on the tests' own function app."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import azure.functions as func

from shared.adapters.broker.sqlite_broker import MAX_DELIVERY_REASON, SqliteBroker
from shared.localhost import DEAD_LETTER_REASON, LocalHost
from tests.localhost.hosted_app import SUB, T0, TOPIC, Q, make_app, write_host_json


def test_success_completes_and_the_handler_gets_the_runtime_message(host, broker, rec, caplog):
    broker.send(
        Q, b'{"n": 1}', message_id="m-1", correlation_id="c-1", application_properties={"kind": "test"}
    )
    caplog.set_level(logging.INFO, logger="shared.localhost")

    assert host.drain() == 1

    (msg,) = rec.messages
    assert isinstance(msg, func.ServiceBusMessage)
    assert msg.get_body() == b'{"n": 1}'
    assert (msg.message_id, msg.delivery_count, msg.correlation_id) == ("m-1", 1, "c-1")
    assert msg.application_properties == {"kind": "test"}
    assert msg.enqueued_time_utc == datetime.fromtimestamp(T0, UTC)
    assert msg.metadata["DeliveryCount"] == 1
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    assert [(i.function, i.outcome) for i in host.invocations] == [("work", "completed")]
    assert any(
        "fn=work" in r.message
        and "outcome=completed" in r.message
        and "id=m-1" in r.message
        and "delivery=1" in r.message
        for r in caplog.records
    )


def test_a_failing_handler_is_abandoned_redelivered_and_dead_lettered_with_the_last_error(host, broker, rec):
    def fail(msg):
        raise ValueError(f"backend said no on delivery {msg.delivery_count}")

    rec.behaviour = fail
    broker.send(Q, b"{}", message_id="poison")

    assert host.drain() == 3  # max_delivery_count=3: tried three times, then dead-lettered

    assert [m.delivery_count for m in rec.messages] == [1, 2, 3]
    assert [i.outcome for i in host.invocations] == ["abandoned", "abandoned", "dead_lettered"]
    (dead,) = broker.dead_letters(Q)
    assert dead.message_id == "poison"
    assert dead.reason == DEAD_LETTER_REASON == MAX_DELIVERY_REASON
    assert dead.description == "ValueError: backend said no on delivery 3"
    assert broker.counts(Q)["active"] == 0


def test_one_failure_does_not_stop_the_next_message(host, broker, rec):
    def first_delivery_of_a_fails(msg):
        if msg.message_id == "a" and msg.delivery_count == 1:
            raise RuntimeError("first fails")

    rec.behaviour = first_delivery_of_a_fails
    broker.send(Q, b"{}", message_id="a")
    broker.send(Q, b"{}", message_id="b")

    host.drain()

    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    outcomes = [(i.message_id, i.delivery_count, i.outcome) for i in host.invocations]
    assert ("a", 1, "abandoned") in outcomes and ("a", 2, "completed") in outcomes
    assert ("b", 1, "completed") in outcomes


def test_a_handler_that_dead_letters_its_own_message_makes_complete_a_no_op(host, broker, rec):
    def reject(msg):
        assert broker.dead_letter_by_id(
            Q, msg.message_id, reason="InvalidRequest", description="env: 'Nope' is not allowed"
        )

    rec.behaviour = reject
    broker.send(Q, b"{}", message_id="bad")

    assert host.drain() == 1

    assert [i.outcome for i in host.invocations] == ["settled_by_handler"]
    (dead,) = broker.dead_letters(Q)
    assert (dead.reason, dead.description) == ("InvalidRequest", "env: 'Nope' is not allowed")
    assert dead.delivery_count == 1


def test_topic_trigger_reads_its_own_subscription_only(host, broker, rec):
    broker.send(TOPIC, b'{"done": true}', message_id="r1:completed")

    assert host.drain() == 1

    (msg,) = rec.topic_messages
    assert msg.message_id == "r1:completed"
    assert broker.counts(TOPIC, subscription=SUB)["active"] == 0
    assert broker.counts(TOPIC, subscription="other")["active"] == 1  # nobody hosts "other"


def test_drain_stops_at_max_messages(host, broker, rec):
    for i in range(3):
        broker.send(Q, b"{}", message_id=f"m{i}")

    assert host.drain(max_messages=2) == 2
    assert broker.counts(Q)["active"] == 1
    assert host.drain() == 1


def test_scheduled_messages_wait_for_their_time(host, broker, rec, clock):
    broker.send(Q, b"{}", message_id="later", scheduled_at=T0 + 60)

    assert host.drain() == 0
    clock.advance(61)
    assert host.drain() == 1


def test_service_bus_output_binding_is_sent_after_success(broker, settings, clock, no_host_json):
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("forward")
    @app.service_bus_queue_trigger(arg_name="msg", queue_name=Q, connection="C")
    @app.service_bus_queue_output(arg_name="out", queue_name="forwarded", connection="C")
    def forward(msg: func.ServiceBusMessage, out: func.Out[str]) -> None:
        out.set(msg.get_body().decode().upper())

    host = LocalHost(app, broker=broker, settings=settings, host_json=no_host_json, clock=clock.epoch)
    broker.send(Q, b"hello", message_id="fw-1")
    host.drain()

    (sent,) = broker.peek("forwarded")
    assert sent.body == b"HELLO" and sent.correlation_id == "fw-1"


def test_lock_is_renewed_while_a_long_handler_runs(host, broker, rec, clock):
    renewals = []

    def long_running(msg):
        for _ in range(3):  # 3 x 40 s = 120 s: twice the 60 s lock
            clock.advance(40)
            renewals.append(host.renew_locks())

    rec.behaviour = long_running
    broker.send(Q, b"{}", message_id="long")

    host.drain()

    assert sum(renewals) >= 2
    assert [i.outcome for i in host.invocations] == ["completed"]
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_without_renewal_past_max_auto_lock_renewal_the_lock_is_lost_and_redelivered(
    rec, broker, settings, clock, tmp_path
):
    host_json = write_host_json(tmp_path / "host.json", {"maxAutoLockRenewalDuration": "00:00:30"})
    host = LocalHost(make_app(rec), broker=broker, settings=settings, host_json=host_json, clock=clock.epoch)
    renewals = []

    def long_running(msg):
        if msg.delivery_count == 1:
            for _ in range(2):
                clock.advance(40)
                renewals.append(host.renew_locks())

    rec.behaviour = long_running
    broker.send(Q, b"{}", message_id="long")
    try:
        host.drain()
    finally:
        host.stop()

    assert renewals == [0, 0]  # the renewal window (30 s) was over before the lock needed it
    assert [(i.delivery_count, i.outcome) for i in host.invocations] == [(1, "lock_lost"), (2, "completed")]


def test_lock_renewal_under_a_real_clock(tmp_path, settings, rec, no_host_json):
    broker = SqliteBroker(tmp_path / "real.sqlite3", lock_duration_s=0.3)
    host = LocalHost(make_app(rec), broker=broker, settings=settings, host_json=no_host_json)
    seen_locked = []

    def slow(msg):
        for _ in range(4):  # 1.2 s in all: four lock durations
            threading.Event().wait(0.3)
            seen_locked.append(broker.peek(Q)[0].locked_until > 0)

    rec.behaviour = slow
    broker.send(Q, b"{}", message_id="slow")
    try:
        host.drain()
    finally:
        host.stop()
        broker.close()

    assert seen_locked == [True, True, True, True]
    assert [i.outcome for i in host.invocations] == ["completed"]


def test_max_concurrent_calls_from_host_json_is_respected(rec, broker, settings, tmp_path):
    broker_real = SqliteBroker(tmp_path / "real.sqlite3", lock_duration_s=30)
    host_json = write_host_json(tmp_path / "host.json", {"maxConcurrentCalls": 2})
    host = LocalHost(make_app(rec), broker=broker_real, settings=settings, host_json=host_json)
    active = 0
    peak = 0
    done = threading.Semaphore(0)
    two_in = threading.Event()
    too_many = threading.Event()
    gate = threading.Event()
    guard = threading.Lock()

    def hold(msg):
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
            if active == 2:
                two_in.set()
            if active > 2:
                too_many.set()
        gate.wait(10)
        with guard:
            active -= 1
        done.release()

    rec.behaviour = hold
    for i in range(6):
        broker_real.send(Q, b"{}", message_id=f"c{i}")
    host.start(timers=False, http=False)
    try:
        assert two_in.wait(10)
        too_many.wait(0.5)  # a third invocation would start well within this if it were allowed
        gate.set()
        for _ in range(6):
            assert done.acquire(timeout=10)
    finally:
        gate.set()
        host.stop()
        broker_real.close()

    assert peak == 2
    assert len(rec.messages) == 6
