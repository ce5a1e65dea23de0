"""The broker contract against the SQLite twin and, through a recording client with Service Bus's
semantics and the SDK's own message types and AMQP encoding, against the Service Bus adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageLockLostError

from shared.adapters.broker.servicebus import ServiceBusPublisher, ServiceBusRejecter, ServiceBusRequestSender
from shared.adapters.broker.sqlite_broker import (
    MessageLockLost,
    ReceivedMessage,
    SqliteBroker,
    SqlitePublisher,
    SqliteRejecter,
    SqliteRequestSender,
)
from tests.support.clock import FakeClock
from tests.support.servicebus import ServiceBusDouble

from .broker_contract import (
    DEDUP_WINDOW_S,
    LOCK_S,
    MAX_DELIVERIES,
    QUEUE,
    REPLIES,
    SUBSCRIPTION,
    TOPIC,
    BrokerContract,
    Got,
)

REJECTED = "training-rejected"


class SqliteHarness:
    lock_lost = MessageLockLost

    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.clock = clock
        self.bus = SqliteBroker(
            path,
            lock_duration_s=LOCK_S,
            max_delivery_count=MAX_DELIVERIES,
            duplicate_detection_window_s=DEDUP_WINDOW_S,
            clock=clock.epoch,
        )
        self.bus.create_queue(QUEUE)
        self.bus.create_queue(REPLIES)
        self.bus.create_subscription(TOPIC, SUBSCRIPTION)
        self.sender = SqliteRequestSender(self.bus, QUEUE)
        self.publisher = SqlitePublisher(self.bus, TOPIC)
        self.rejecter = SqliteRejecter(self.bus, QUEUE)

    @staticmethod
    def _got(m: ReceivedMessage) -> Got:
        return Got(
            m.message_id, m.body, m.delivery_count, m.correlation_id, m.application_properties, native=m
        )

    def receive(self, entity: str, *, subscription: str | None = None, max_messages: int = 1) -> list[Got]:
        return [
            self._got(m)
            for m in self.bus.receive(entity, subscription=subscription, max_messages=max_messages)
        ]

    def complete(self, got: Got) -> None:
        self.bus.complete(got.native)

    def abandon(self, got: Got) -> None:
        self.bus.abandon(got.native)

    def dead_letter(self, got: Got, *, reason: str, description: str) -> None:
        self.bus.dead_letter(got.native, reason=reason, description=description)

    def renew_lock(self, got: Got) -> None:
        self.bus.renew_lock(got.native)

    def dead_letters(self, entity: str) -> list[Got]:
        return [
            Got(
                d.message_id,
                d.body,
                d.delivery_count,
                d.correlation_id,
                d.application_properties,
                d.reason,
                d.description,
            )
            for d in self.bus.dead_letters(entity)
        ]

    def rejected(self) -> list[Got]:
        return self.dead_letters(QUEUE)


def _props(m: ServiceBusReceivedMessage) -> dict[str, Any]:
    def text(v: Any) -> Any:
        return v.decode("utf-8") if isinstance(v, bytes) else v

    return {text(k): text(v) for k, v in (m.application_properties or {}).items()}


def _sb_got(m: ServiceBusReceivedMessage) -> Got:
    # the SDK reports the AMQP header's prior attempts; the contract counts this delivery too
    return Got(
        str(m.message_id),
        b"".join(m.body),
        (m.delivery_count or 0) + 1,
        m.correlation_id,
        _props(m),
        m.dead_letter_reason,
        m.dead_letter_error_description,
        native=m,
    )


class ServiceBusHarness:
    lock_lost = MessageLockLostError

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.bus = ServiceBusDouble(
            clock=clock.epoch,
            lock_duration_s=LOCK_S,
            max_delivery_count=MAX_DELIVERIES,
            duplicate_detection_window_s=DEDUP_WINDOW_S,
        )
        for queue in (QUEUE, REPLIES, REJECTED):
            self.bus.create_queue(queue)
        self.bus.create_subscription(TOPIC, SUBSCRIPTION)
        options: dict[str, Any] = {"client_factory": lambda: self.bus, "sleep": lambda s: None}
        self.sender = ServiceBusRequestSender(queue_name=QUEUE, **options)
        self.publisher = ServiceBusPublisher(topic_name=TOPIC, **options)
        self.rejecter = ServiceBusRejecter(queue_name=REJECTED, **options)
        self._receivers: dict[int, Any] = {}

    def _receiver(self, entity: str, subscription: str | None, *, dead: bool = False) -> Any:
        sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead else None
        if subscription is None:
            return self.bus.get_queue_receiver(queue_name=entity, sub_queue=sub_queue)
        return self.bus.get_subscription_receiver(
            topic_name=entity, subscription_name=subscription, sub_queue=sub_queue
        )

    def receive(self, entity: str, *, subscription: str | None = None, max_messages: int = 1) -> list[Got]:
        receiver = self._receiver(entity, subscription)
        out = [_sb_got(m) for m in receiver.receive_messages(max_message_count=max_messages)]
        for got in out:
            self._receivers[id(got.native)] = receiver
        return out

    def complete(self, got: Got) -> None:
        self._receivers[id(got.native)].complete_message(got.native)

    def abandon(self, got: Got) -> None:
        self._receivers[id(got.native)].abandon_message(got.native)

    def dead_letter(self, got: Got, *, reason: str, description: str) -> None:
        self._receivers[id(got.native)].dead_letter_message(
            got.native, reason=reason, error_description=description
        )

    def renew_lock(self, got: Got) -> None:
        self._receivers[id(got.native)].renew_message_lock(got.native)

    def dead_letters(self, entity: str) -> list[Got]:
        return [
            _sb_got(m) for m in self._receiver(entity, None, dead=True).peek_messages(max_message_count=100)
        ]

    def rejected(self) -> list[Got]:
        out = []
        for m in self._receiver(REJECTED, None).peek_messages(max_message_count=100):
            got = _sb_got(m)
            props = got.application_properties
            got.message_id = props["original_message_id"]
            got.reason, got.description = props["reason"], props["description"]
            out.append(got)
        return out


class TestSqliteBroker(BrokerContract):
    @pytest.fixture
    def broker(self, tmp_path: Path, clock: FakeClock):
        harness = SqliteHarness(tmp_path / "bus.db", clock)
        yield harness
        harness.bus.close()


class TestServiceBusAdapters(BrokerContract):
    @pytest.fixture
    def broker(self, clock: FakeClock) -> ServiceBusHarness:
        return ServiceBusHarness(clock)
