"""A recording ``ServiceBusClient`` with Service Bus's entity semantics, for the broker contract.

It stands where the network would be under :mod:`shared.adapters.broker.servicebus`: the adapters send
real ``azure.servicebus.ServiceBusMessage`` objects, each one is encoded to AMQP bytes with the
SDK's own transport (``PyamqpTransport.to_outgoing_amqp_message`` + ``_pyamqp._encode``), kept
as those bytes, and decoded again on receive into a real ``ServiceBusReceivedMessage``. So the
message id, the scheduled enqueue time, the properties and the body reach the receiving side only
as they would cross the wire.

What it models, as Service Bus documents it (learn.microsoft.com/azure/service-bus-messaging:
"message-transfers-locks-settlement", "duplicate-detection", "message-sequencing",
"service-bus-dead-letter-queues"): peek-lock with a lock that expires; a delivery count that
grows on every lock, the message dead-lettered with ``MaxDeliveryCountExceeded`` once it has been
delivered ``max_delivery_count`` times; explicit dead-lettering with ``DeadLetterReason`` and
``DeadLetterErrorDescription``; duplicate detection on ``MessageId`` per entity within a window;
scheduled messages invisible until due; topics that copy each message to every subscription (a
topic without subscriptions drops it); a send to an entity that does not exist fails with
``MessagingEntityNotFoundError``. The AMQP header carries the delivery count minus one (the AMQP
spec counts prior attempts: Azure/azure-sdk-for-java#11845), as the service sends it.

Everything sent is also recorded in ``sent`` (kind, entity, the SDK message), as the recording
client in ``tests/azure/test_servicebus.py`` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import Header
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.exceptions import MessageLockLostError, MessagingEntityNotFoundError

MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
_SUB = "/Subscriptions/"


@dataclass
class _Stored:
    seq: int
    message_id: str
    wire: bytes  # the AMQP message as encoded by the SDK
    enqueued_at: float
    visible_at: float
    deliveries: int = 0
    lock_token: str | None = None
    reason: str | None = None  # set once dead-lettered
    description: str | None = None


def to_wire(message: ServiceBusMessage) -> bytes:
    """The bytes the SDK would put on the link for ``message``."""
    outgoing = PyamqpTransport.to_outgoing_amqp_message(message.raw_amqp_message)
    return bytes(encode_payload(bytearray(), outgoing))


class ServiceBusDouble:
    """Stands in for ``ServiceBusClient``: senders, receivers, one namespace's entities."""

    fully_qualified_namespace = "rlq-test.servicebus.windows.net"

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        lock_duration_s: float = 30.0,
        max_delivery_count: int = 10,
        duplicate_detection_window_s: float = 600.0,
    ) -> None:
        self.clock = clock
        self.lock_duration_s = lock_duration_s
        self.max_delivery_count = max_delivery_count
        self.duplicate_detection_window_s = duplicate_detection_window_s
        self.queues: set[str] = set()
        self.topics: dict[str, list[str]] = {}
        self.sent: list[tuple[str, str, ServiceBusMessage]] = []
        self._active: dict[str, list[_Stored]] = {}
        self._dead: dict[str, list[_Stored]] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._seq = 0

    # --- entities (what the Bicep template creates) ---------------------------------------

    def create_queue(self, name: str) -> None:
        self.queues.add(name)

    def create_subscription(self, topic: str, name: str) -> None:
        subs = self.topics.setdefault(topic, [])
        if name not in subs:
            subs.append(name)

    # --- the ServiceBusClient surface the adapters and the contract use -------------------

    def get_queue_sender(self, *, queue_name: str) -> _Sender:
        return _Sender(self, "queue", queue_name)

    def get_topic_sender(self, *, topic_name: str) -> _Sender:
        return _Sender(self, "topic", topic_name)

    def get_queue_receiver(
        self, *, queue_name: str, sub_queue: ServiceBusSubQueue | None = None
    ) -> _Receiver:
        return _Receiver(self, queue_name, dead=sub_queue == ServiceBusSubQueue.DEAD_LETTER)

    def get_subscription_receiver(
        self, *, topic_name: str, subscription_name: str, sub_queue: ServiceBusSubQueue | None = None
    ) -> _Receiver:
        return _Receiver(
            self, f"{topic_name}{_SUB}{subscription_name}", dead=sub_queue == ServiceBusSubQueue.DEAD_LETTER
        )

    def close(self) -> None:
        pass

    # --- the service's side ---------------------------------------------------------------

    def _accept(self, kind: str, name: str, message: ServiceBusMessage) -> None:
        if (kind == "queue" and name not in self.queues) or (kind == "topic" and name not in self.topics):
            raise MessagingEntityNotFoundError(f"The messaging entity '{name}' could not be found.")
        self.sent.append((kind, name, message))
        wire = to_wire(message)
        decoded = decode_payload(memoryview(wire))
        message_id = decoded.properties.message_id.decode("utf-8")
        now = self.clock()
        seen = self._seen.get((name, message_id))
        if seen is not None and now - seen < self.duplicate_detection_window_s:
            return  # accepted and dropped, as duplicate detection does
        self._seen[(name, message_id)] = now
        annotations = decoded.message_annotations or {}
        scheduled_ms = annotations.get(b"x-opt-scheduled-enqueue-time")
        visible = now if scheduled_ms is None else max(now, scheduled_ms / 1000.0)
        paths = [f"{name}{_SUB}{s}" for s in self.topics[name]] if kind == "topic" else [name]
        for path in paths:
            self._seq += 1
            self._active.setdefault(path, []).append(_Stored(self._seq, message_id, wire, now, visible))

    def _lock(self, receiver: _Receiver, limit: int) -> list[ServiceBusReceivedMessage]:
        path, now = receiver.path, self.clock()
        out: list[ServiceBusReceivedMessage] = []
        for stored in sorted(self._active.get(path, []), key=lambda s: s.seq):
            if len(out) >= limit:
                break
            if stored.visible_at > now:
                continue
            if stored.deliveries >= self.max_delivery_count:
                self._to_dead(
                    path,
                    stored,
                    MAX_DELIVERY_REASON,
                    f"Message could not be consumed after {self.max_delivery_count} delivery attempts.",
                )
                continue
            stored.deliveries += 1
            stored.lock_token = str(uuid.uuid4())
            stored.visible_at = now + self.lock_duration_s
            out.append(self._received(receiver, stored, locked_until=stored.visible_at))
        return out

    def _to_dead(self, path: str, stored: _Stored, reason: str, description: str) -> None:
        self._active[path].remove(stored)
        stored.reason, stored.description, stored.lock_token = reason, description, None
        self._dead.setdefault(path, []).append(stored)

    def _received(
        self, receiver: _Receiver, stored: _Stored, *, locked_until: float | None
    ) -> ServiceBusReceivedMessage:
        decoded = decode_payload(memoryview(stored.wire))
        annotations: dict[Any, Any] = dict(decoded.message_annotations or {})
        annotations[b"x-opt-sequence-number"] = stored.seq
        annotations[b"x-opt-enqueued-time"] = int(stored.enqueued_at * 1000)
        if locked_until is not None:
            annotations[b"x-opt-locked-until"] = int(locked_until * 1000)
        props: dict[Any, Any] = dict(decoded.application_properties or {})
        if stored.reason is not None:
            props[b"DeadLetterReason"] = stored.reason.encode("utf-8")
            props[b"DeadLetterErrorDescription"] = (stored.description or "").encode("utf-8")
        wire_header = Header(delivery_count=max(stored.deliveries - 1, 0))
        message = decoded._replace(
            header=wire_header, message_annotations=annotations, application_properties=props
        )
        return ServiceBusReceivedMessage(
            message,
            receive_mode="peeklock",
            receiver=receiver,
            lock_token=None if locked_until is None else uuid.UUID(stored.lock_token or ""),
            is_peeked_message=locked_until is None,
        )

    def _held(self, path: str, message: ServiceBusReceivedMessage) -> tuple[str, _Stored]:
        seq, token = message.sequence_number, str(message.lock_token or "")
        now = self.clock()
        for stored in self._active.get(path, []):
            if stored.seq == seq and stored.lock_token == token and token and stored.visible_at > now:
                return path, stored
        raise MessageLockLostError(
            message="The lock supplied is invalid: it expired or the message was settled."
        )


class _Sender:
    def __init__(self, bus: ServiceBusDouble, kind: str, name: str) -> None:
        self.bus, self.kind, self.name = bus, kind, name

    def send_messages(self, message: ServiceBusMessage, *, timeout: float | None = None) -> None:
        self.bus._accept(self.kind, self.name, message)

    def close(self) -> None:
        pass


class _Receiver:
    """``ServiceBusReceiver`` in peek-lock mode (its dead-letter sub-queue when ``dead``)."""

    session = None  # not a session receiver (``locked_until_utc`` asks)

    def __init__(self, bus: ServiceBusDouble, path: str, *, dead: bool) -> None:
        self.bus, self.path, self.dead = bus, path, dead

    def receive_messages(self, max_message_count: int | None = 1, max_wait_time: float | None = None):
        if self.dead:
            return self.peek_messages(max_message_count or 1)
        return self.bus._lock(self, max_message_count or 1)

    def peek_messages(self, max_message_count: int = 1) -> list[ServiceBusReceivedMessage]:
        store = self.bus._dead if self.dead else self.bus._active
        rows = sorted(store.get(self.path, []), key=lambda s: s.seq)[:max_message_count]
        return [self.bus._received(self, s, locked_until=None) for s in rows]

    def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        path, stored = self.bus._held(self.path, message)
        self.bus._active[path].remove(stored)

    def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        _, stored = self.bus._held(self.path, message)
        stored.lock_token = None
        stored.visible_at = self.bus.clock()  # back in line at once, in its place (by sequence)

    def dead_letter_message(
        self,
        message: ServiceBusReceivedMessage,
        reason: str | None = None,
        error_description: str | None = None,
    ) -> None:
        path, stored = self.bus._held(self.path, message)
        self.bus._to_dead(path, stored, reason or "", error_description or "")

    def renew_message_lock(self, message: ServiceBusReceivedMessage) -> datetime:
        _, stored = self.bus._held(self.path, message)
        stored.visible_at = self.bus.clock() + self.bus.lock_duration_s
        return datetime.fromtimestamp(stored.visible_at, UTC)

    def close(self) -> None:
        pass
