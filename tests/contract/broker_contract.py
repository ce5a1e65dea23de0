"""The broker contract: what rlq's queue code relies on, for every broker it runs on.

The ports (:class:`shared.ports.RequestSender`, :class:`~shared.ports.Publisher`,
:class:`~shared.ports.Rejecter`) are what rlq calls; the receiving side (peek-lock, settlement,
delivery counts, dead letters) is what the Functions host, the local host and ``rlq
dead-letters`` rely on. A subclass provides ``broker``, a :class:`BrokerHarness` over one
backend: the SQLite twin itself, or the Service Bus adapters over a recording client with
Service Bus's semantics (``tests/support/servicebus.py``).

Every harness reads the same facts: ``delivery_count`` is the number of this delivery (1 on
the first; the Python SDK reports the AMQP header's prior attempts, so its harness adds one),
properties have ``str`` keys, a rejected request is read where a person finds it (the SQLite
twin's dead-letter sub-queue, Service Bus's ``training-rejected`` queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Protocol

import pytest

from shared.contracts.completion import CompletionMessage
from shared.ports import Publisher, Rejecter, RequestSender
from tests.support.clock import FakeClock

QUEUE = "training-requests"
TOPIC = "training-completed"
SUBSCRIPTION = "notifier"
REPLIES = "replies"
LOCK_S = 30.0
MAX_DELIVERIES = 10
DEDUP_WINDOW_S = 600.0
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


@dataclass
class Got:
    """One received (or dead-lettered) message, the same fields from every backend."""

    message_id: str
    body: bytes
    delivery_count: int
    correlation_id: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    description: str | None = None
    native: Any = None  # the backend's own message object, for settling


class BrokerHarness(Protocol):
    """One backend, set up with ``QUEUE``, ``TOPIC``/``SUBSCRIPTION``, ``REPLIES`` and the
    limits above, on the test's fake clock."""

    clock: FakeClock
    sender: RequestSender  # onto QUEUE
    publisher: Publisher  # onto TOPIC
    rejecter: Rejecter  # for QUEUE
    lock_lost: type[Exception]

    def receive(
        self, entity: str, *, subscription: str | None = None, max_messages: int = 1
    ) -> list[Got]: ...

    def complete(self, got: Got) -> None: ...

    def abandon(self, got: Got) -> None: ...

    def dead_letter(self, got: Got, *, reason: str, description: str) -> None: ...

    def renew_lock(self, got: Got) -> None: ...

    def dead_letters(self, entity: str) -> list[Got]: ...

    def rejected(self) -> list[Got]:
        """Rejected requests, with ``message_id`` the request's own id (not a derived one)."""


def completion(request_id: str = "r9") -> CompletionMessage:
    return CompletionMessage(
        message_id=f"{request_id}:completed",
        request_id=request_id,
        status="Completed",
        experiment="pong",
        env="PongNoFrameskip-v4",
        final_reward=19.5,
    )


class BrokerContract:
    """Subclass and provide a ``broker`` fixture returning a :class:`BrokerHarness`."""

    broker_name: ClassVar[str] = "broker"

    def one(self, broker: BrokerHarness, entity: str = QUEUE, **kw: Any) -> Got:
        got = broker.receive(entity, **kw)
        assert len(got) == 1, got
        return got[0]

    # --- send, receive, settle ------------------------------------------------------------

    def test_ports_are_satisfied(self, broker: BrokerHarness) -> None:
        assert isinstance(broker.sender, RequestSender)
        assert isinstance(broker.publisher, Publisher)
        assert isinstance(broker.rejecter, Rejecter)

    def test_sent_request_is_received_once_and_gone_when_completed(self, broker: BrokerHarness) -> None:
        broker.sender.send(b'{"request_id": "r1"}', message_id="r1")
        got = self.one(broker)
        assert (got.message_id, got.body, got.delivery_count) == ("r1", b'{"request_id": "r1"}', 1)
        assert broker.receive(QUEUE) == []  # locked: no second receiver gets it
        broker.complete(got)
        broker.clock.advance(LOCK_S + 1)  # nor after its lock would have expired
        assert broker.receive(QUEUE) == []

    def test_messages_come_in_send_order(self, broker: BrokerHarness) -> None:
        for i in range(4):
            broker.sender.send(str(i).encode(), message_id=f"m{i}")
            broker.clock.advance(0.001)
        assert [g.body for g in broker.receive(QUEUE, max_messages=3)] == [b"0", b"1", b"2"]
        assert [g.body for g in broker.receive(QUEUE, max_messages=10)] == [b"3"]

    def test_abandon_redelivers_at_once_in_its_place_with_a_higher_count(self, broker: BrokerHarness) -> None:
        broker.sender.send(b"first", message_id="a")
        broker.clock.advance(1)
        broker.sender.send(b"second", message_id="b")
        got = self.one(broker)
        broker.abandon(got)
        again = self.one(broker)
        assert (again.message_id, again.delivery_count) == ("a", 2)

    def test_expired_lock_redelivers_with_a_higher_count(self, broker: BrokerHarness) -> None:
        broker.sender.send(b"x", message_id="slow")
        first = self.one(broker)
        broker.clock.advance(LOCK_S - 0.1)
        assert broker.receive(QUEUE) == []
        broker.clock.advance(0.2)
        second = self.one(broker)
        assert (second.message_id, second.delivery_count) == ("slow", 2)
        with pytest.raises(broker.lock_lost):  # the first holder's settlement is refused
            broker.complete(first)
        broker.complete(second)
        assert broker.receive(QUEUE) == []

    def test_settling_after_the_lock_expired_raises_and_keeps_the_message(
        self, broker: BrokerHarness
    ) -> None:
        broker.sender.send(b"x", message_id="late")
        got = self.one(broker)
        broker.clock.advance(LOCK_S + 1)
        with pytest.raises(broker.lock_lost):
            broker.complete(got)
        with pytest.raises(broker.lock_lost):
            broker.abandon(got)
        with pytest.raises(broker.lock_lost):
            broker.dead_letter(got, reason="r", description="d")
        with pytest.raises(broker.lock_lost):
            broker.renew_lock(got)
        assert self.one(broker).message_id == "late"
        assert broker.dead_letters(QUEUE) == []

    def test_renewed_lock_outlasts_the_first(self, broker: BrokerHarness) -> None:
        broker.sender.send(b"x", message_id="long")
        got = self.one(broker)
        broker.clock.advance(LOCK_S * 2 / 3)
        broker.renew_lock(got)
        broker.clock.advance(LOCK_S * 2 / 3)  # past the first lock, inside the renewed one
        assert broker.receive(QUEUE) == []
        broker.complete(got)

    # --- dead letters ---------------------------------------------------------------------

    def test_dead_letter_keeps_body_reason_and_description(self, broker: BrokerHarness) -> None:
        broker.sender.send(b'{"bad": true}', message_id="bad-1")
        got = self.one(broker)
        broker.dead_letter(got, reason="InvalidRequest", description="algorithm: 'DQN' is not allowed")
        assert broker.receive(QUEUE) == []
        [dead] = broker.dead_letters(QUEUE)
        assert (dead.message_id, dead.body, dead.reason, dead.description, dead.delivery_count) == (
            "bad-1",
            b'{"bad": true}',
            "InvalidRequest",
            "algorithm: 'DQN' is not allowed",
            1,
        )

    def test_a_message_delivered_the_maximum_times_is_dead_lettered(self, broker: BrokerHarness) -> None:
        broker.sender.send(b"poison", message_id="p")
        for attempt in range(1, MAX_DELIVERIES + 1):
            got = self.one(broker)
            assert got.delivery_count == attempt
            if attempt % 2:
                broker.abandon(got)
            else:
                broker.clock.advance(LOCK_S + 1)  # lock expiries count too
        broker.sender.send(b"fine", message_id="f")
        assert [g.message_id for g in broker.receive(QUEUE, max_messages=5)] == ["f"]
        [dead] = broker.dead_letters(QUEUE)
        assert (dead.message_id, dead.reason, dead.delivery_count) == (
            "p",
            MAX_DELIVERY_REASON,
            MAX_DELIVERIES,
        )
        assert f"{MAX_DELIVERIES} delivery attempts" in (dead.description or "")

    # --- duplicate detection and scheduling -----------------------------------------------

    def test_a_repeated_message_id_is_dropped_within_the_window(self, broker: BrokerHarness) -> None:
        broker.sender.send(b"1", message_id="same")
        broker.complete(self.one(broker))  # even once consumed, the id is remembered
        broker.clock.advance(DEDUP_WINDOW_S - 1)
        broker.sender.send(b"2", message_id="same")
        assert broker.receive(QUEUE) == []
        broker.clock.advance(2)
        broker.sender.send(b"3", message_id="same")
        assert self.one(broker).body == b"3"

    def test_a_scheduled_request_is_invisible_until_due(self, broker: BrokerHarness) -> None:
        due = broker.clock() + timedelta(seconds=60)
        broker.sender.send(b"later", message_id="deferred", scheduled_at=due)
        broker.sender.send(
            b"naive", message_id="naive", scheduled_at=(due + timedelta(seconds=60)).replace(tzinfo=None)
        )
        assert broker.receive(QUEUE) == []
        broker.clock.advance(59)
        assert broker.receive(QUEUE) == []
        broker.clock.advance(1)
        [got] = broker.receive(QUEUE, max_messages=5)
        assert got.message_id == "deferred"
        broker.complete(got)
        broker.clock.advance(60)  # a naive time is UTC
        assert [g.message_id for g in broker.receive(QUEUE, max_messages=5)] == ["naive"]

    # --- the ports' promises --------------------------------------------------------------

    def test_publish_reaches_each_subscription_and_the_reply_queue_once(self, broker: BrokerHarness) -> None:
        msg = completion("r9")
        broker.publisher.publish(msg, reply_to=REPLIES)
        broker.publisher.publish(msg, reply_to=REPLIES)  # the outbox's retry after a lost ack
        got = self.one(broker, TOPIC, subscription=SUBSCRIPTION)
        assert broker.receive(TOPIC, subscription=SUBSCRIPTION) == []
        assert got.message_id == "r9:completed"
        assert CompletionMessage.model_validate_json(got.body) == msg
        assert got.correlation_id == "r9"
        assert {k: got.application_properties.get(k) for k in ("status", "experiment", "env")} == {
            "status": "Completed",
            "experiment": "pong",
            "env": "PongNoFrameskip-v4",
        }
        assert [r.message_id for r in broker.receive(REPLIES, max_messages=5)] == ["r9:completed"]

    def test_a_rejected_request_is_kept_with_its_reason_and_leaves_the_queue(
        self, broker: BrokerHarness
    ) -> None:
        broker.sender.send(b"{bad", message_id="bad-2")
        got = self.one(broker)
        broker.rejecter.reject(
            message_id="bad-2", body=got.body, reason="InvalidRequest", description="(body): malformed"
        )
        broker.complete(got)  # the handler returns normally: its host completes the message
        broker.clock.advance(LOCK_S + 1)
        assert broker.receive(QUEUE) == []
        [kept] = broker.rejected()
        assert (kept.message_id, kept.body, kept.reason, kept.description) == (
            "bad-2",
            b"{bad",
            "InvalidRequest",
            "(body): malformed",
        )
