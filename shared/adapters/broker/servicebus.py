"""Azure Service Bus: the completion topic, the intake queue, and explicit rejections.

Three small adapters share one shape: a lazily built ``ServiceBusClient`` (connection string, or
``DefaultAzureCredential`` + namespace: managed identity in Azure), one cached sender per entity,
one retry layer, and SDK errors translated here, at the boundary, into :mod:`shared.errors`:

* :class:`ServiceBusPublisher` — :class:`shared.ports.Publisher`: the completion message to the
  ``training-completed`` topic and, when the request named one, to its ``reply_to`` queue.
* :class:`ServiceBusRequestSender` — :class:`shared.ports.RequestSender`: a request onto the
  ``training-requests`` queue, optionally scheduled (deferral).
* :class:`ServiceBusRejecter` — what the intake calls for a message that can never succeed.

Why rejections are messages and not dead letters: the Python Functions worker settles the
trigger's message itself (complete on return, abandon on exception). Settling it from the function
needs the SDK-type binding (``azurefunctions-extensions-bindings-servicebus``:
``ServiceBusReceivedMessage`` + ``ServiceBusMessageActions.deadletter``, the trigger declared with
``auto_complete_messages=False``). It was evaluated and not adopted: only pre-releases exist
(1.0.0b2), it pins ``protobuf<7`` (a major downgrade of the environment's protobuf) and decodes every
message with the deprecated ``uamqp`` library; ``docs/azure.md`` section 6 has each check and its
result, and what switching involves. So the intake records the run as ``rejected``, calls
:meth:`ServiceBusRejecter.reject` and returns normally, and the original is completed once, never
retried ten times. The original body, the reason and the description land on the
``training-rejected`` queue (and, when the body names one, a short notice on the request's
``reply_to`` queue).

Retries: one layer only. The SDK client is built with ``retry_total=0`` (its own default is 3
retries with back-off up to 120 s, which stacked under ours multiplied the attempts and the time);
this module retries what the SDK marks retryable (``ServiceBusError._retryable`` in
``azure/servicebus/exceptions.py``) with the adapters' one policy (:mod:`shared.adapters._retry`),
bounded in attempts and in total time: each attempt's operation
timeout and each wait are cut to what is left of ``max_retry_s``, so one call never outlasts it.
``ServiceBusAuthenticationError`` and ``ServiceBusAuthorizationError`` are among the retryable
ones: a role assignment made by the deploy can take minutes to reach Service Bus
(https://learn.microsoft.com/azure/role-based-access-control/troubleshooting). When they outlast
the budget they surface as :class:`shared.errors.TransientError` naming the role to check, so the
queue redelivers the request and the outbox publishes later, instead of giving up for good.

Message ids longer than Service Bus's 128 characters are shortened deterministically (prefix +
hash), so duplicate detection still drops repeats; the full id travels in ``rlq_message_id``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenacity import RetryCallState

from shared import telemetry
from shared.adapters import _retry
from shared.adapters._redact import scrub
from shared.adapters._retry import MIN_ATTEMPT_S, ROLE_PROPAGATION_HINT, bounded_retrying
from shared.contracts.completion import CompletionMessage
from shared.contracts.models import PromotionEvent
from shared.contracts.request import QUEUE_RE
from shared.errors import PermanentError, TransientError
from shared.settings import Settings

if TYPE_CHECKING:  # the SDK is imported lazily: the local mode never loads it
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

log = logging.getLogger(__name__)

REJECTED_QUEUE_NAME = "training-rejected"
MAX_ID_LENGTH = 128  # Service Bus MessageId / CorrelationId limit
MAX_DESCRIPTION_BYTES = 4096
# Standard tier caps a message at 256 KB, headers included: keep room for the properties.
MAX_REJECTED_BODY_BYTES = 192 * 1024
CONTENT_TYPE = "application/json"
PROBE_TIMEOUT_S = 5.0  # the readiness probe's link must be ready within this

ClientFactory = Callable[[], "ServiceBusClient"]


# --- message construction (pure: the tests assert on these SDK objects) ---------------------


def sb_message_id(value: str) -> str:
    """``value`` if Service Bus accepts it as a MessageId, else a deterministic shortening.

    The same long id always maps to the same short one, so duplicate detection keeps working.
    """
    if len(value) <= MAX_ID_LENGTH:
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]
    return f"{value[: MAX_ID_LENGTH - len(digest) - 1]}~{digest}"


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "..."


def completion_message(message: CompletionMessage) -> ServiceBusMessage:
    """The topic / reply-queue message for a completion: id ``<request_id>:completed``."""
    from azure.servicebus import ServiceBusMessage

    props: dict[str | bytes, Any] = {
        "status": message.status,
        "experiment": message.experiment,
        "rlq_message_id": message.message_id,
    }
    props.update(telemetry.inject().items())  # traceparent / Diagnostic-Id, as the SDK's tracing sets them
    for key in ("env", "algorithm", "stop_reason"):
        value = getattr(message, key)
        if value is not None:
            props[key] = value
    return ServiceBusMessage(
        message.model_dump_json(),
        message_id=sb_message_id(message.message_id),
        correlation_id=sb_message_id(message.request_id),
        content_type=CONTENT_TYPE,
        subject="training-completed",
        application_properties=props,
    )


def promotion_message(event: PromotionEvent) -> ServiceBusMessage:
    """The topic message for a champion change: id ``model-promoted:<model>:<n>``, subject
    ``model-promoted`` (a subscription that wants completions only filters on it)."""
    from azure.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        event.model_dump_json(),
        message_id=sb_message_id(event.message_id),
        correlation_id=sb_message_id(event.request_id) if event.request_id else None,
        content_type=CONTENT_TYPE,
        subject=event.event,
        application_properties={
            "event": event.event,
            "model": event.model,
            "rlq_message_id": event.message_id,
        },
    )


def request_message(
    body: bytes, *, message_id: str, scheduled_at: datetime | None = None
) -> ServiceBusMessage:
    """A training request for the intake queue; ``scheduled_at`` (UTC) defers its delivery."""
    from azure.servicebus import ServiceBusMessage

    when = None
    if scheduled_at is not None:
        when = scheduled_at if scheduled_at.tzinfo is not None else scheduled_at.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    props: dict[str | bytes, Any] = {"rlq_message_id": message_id}
    props.update(telemetry.inject().items())  # the sender's trace goes on in the intake
    return ServiceBusMessage(
        bytes(body),
        message_id=sb_message_id(message_id),
        content_type=CONTENT_TYPE,
        scheduled_enqueue_time_utc=when,
        application_properties=props,
    )


def rejection_message(*, message_id: str, body: bytes, reason: str, description: str) -> ServiceBusMessage:
    """The original body, kept for a person, with why it can never run: ``<message_id>:rejected``."""
    from azure.servicebus import ServiceBusMessage

    original = bytes(body)
    props: dict[str | bytes, Any] = {
        "reason": truncate_utf8(reason or "Rejected", 256),
        "description": truncate_utf8(description or "", MAX_DESCRIPTION_BYTES),
        "original_message_id": truncate_utf8(message_id, 1024),
        "rlq_message_id": f"{message_id}:rejected",
    }
    if len(original) > MAX_REJECTED_BODY_BYTES:
        props["body_truncated"] = True
        props["body_bytes"] = len(original)
        original = original[:MAX_REJECTED_BODY_BYTES]
    return ServiceBusMessage(
        original,
        message_id=sb_message_id(f"{message_id}:rejected"),
        correlation_id=sb_message_id(message_id) if message_id else None,
        content_type=CONTENT_TYPE,
        subject="training-rejected",
        application_properties=props,
    )


def rejection_notice(
    *, message_id: str, request_id: str | None, reason: str, description: str
) -> ServiceBusMessage:
    """What the requester's ``reply_to`` queue gets: a short JSON notice, not the body again."""
    from azure.servicebus import ServiceBusMessage

    desc = truncate_utf8(description or "", MAX_DESCRIPTION_BYTES)
    notice = {
        "message_id": f"{message_id}:rejected",
        "request_id": request_id,
        "status": "Rejected",
        "reason": reason,
        "error": desc,
    }
    return ServiceBusMessage(
        json.dumps(notice),
        message_id=sb_message_id(f"{message_id}:rejected"),
        correlation_id=sb_message_id(request_id or message_id) if (request_id or message_id) else None,
        content_type=CONTENT_TYPE,
        subject="training-rejected",
        application_properties={
            "status": "Rejected",
            "reason": truncate_utf8(reason, 256),
            "description": desc,
        },
    )


def body_fields(body: bytes) -> tuple[str | None, str | None]:
    """``(request_id, reply_to)`` from a body that may be anything; None for what is unusable."""
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    rid = data.get("request_id")
    reply = data.get("reply_to")
    rid = rid if isinstance(rid, str) and 0 < len(rid) <= 1024 else None
    reply = reply if isinstance(reply, str) and re.match(QUEUE_RE, reply) else None
    return rid, reply


# --- error translation ----------------------------------------------------------------------


def _permanent_types() -> tuple[type[BaseException], ...]:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.servicebus.exceptions import MessageSizeExceededError, MessagingEntityNotFoundError

    # Not here: ServiceBusAuthenticationError / ServiceBusAuthorizationError. The SDK marks them
    # retryable, and right after a deploy they are: the role assignment is still propagating.
    return (
        MessageSizeExceededError,
        MessagingEntityNotFoundError,
        ClientAuthenticationError,
        ValueError,
        TypeError,
    )


def is_retryable(err: BaseException) -> bool:
    """True for faults worth trying again within this call: busy, connection, timeouts."""
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError
    from azure.servicebus.exceptions import ServiceBusError

    if isinstance(err, _permanent_types()):
        return False
    if isinstance(err, ServiceBusError):
        # the SDK marks each error class retryable or not (a private flag: there is no public one)
        return bool(getattr(err, "_retryable", getattr(err, "retryable", False)))
    return isinstance(err, (TimeoutError, ConnectionError, ServiceRequestError, ServiceResponseError))


def translate(err: BaseException, *, action: str, secrets: tuple[str | None, ...] = ()) -> Exception:
    """The :mod:`shared.errors` exception for an SDK error (``raise translate(...) from err``)."""
    from azure.core.exceptions import AzureError
    from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusAuthorizationError

    kind = type(err).__name__
    text = scrub(str(err) or kind, *secrets)
    text = truncate_utf8(text, 1024)
    if isinstance(err, (ServiceBusAuthorizationError, ServiceBusAuthenticationError)):
        check = (
            "the identity needs 'Azure Service Bus Data Sender' on the namespace"
            if isinstance(err, ServiceBusAuthorizationError)
            else "check RLQ_SERVICEBUS_NAMESPACE and the managed identity"
        )
        return TransientError(
            f"Service Bus {action} failed, try again later: {kind}: {text} ({check}{ROLE_PROPAGATION_HINT})"
        )
    if isinstance(err, _permanent_types()):
        hint = {
            "MessagingEntityNotFoundError": " (create the queue/topic: see infra/main.bicep)",
            "ClientAuthenticationError": " (no credential: managed identity, az login or a connection string)",
            "MessageSizeExceededError": " (the message is larger than the entity accepts)",
        }.get(kind, "")
        return PermanentError(
            f"Service Bus {action} failed: {kind}: {text}{hint}", reason="ServiceBus" + kind
        )
    if isinstance(err, (AzureError, TimeoutError, ConnectionError)):
        return TransientError(f"Service Bus {action} failed, try again later: {kind}: {text}")
    return TransientError(f"Service Bus {action} failed unexpectedly: {kind}: {text}")


# --- the shared client ----------------------------------------------------------------------


class _ServiceBusSide:
    """A lazily built client, cached senders, bounded retries. Thread-safe (one lock per sender)."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        client_factory: ClientFactory | None = None,
        max_attempts: int = _retry.MAX_ATTEMPTS,
        max_retry_s: float = _retry.MAX_RETRY_S,
        backoff_s: float = _retry.BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        operation_timeout_s: float = 15.0,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        if settings is None and client_factory is None:
            raise ValueError("pass settings= or client_factory=")
        self._settings = settings
        self._factory = client_factory or (lambda: client_from_settings(settings))  # type: ignore[arg-type]
        self._client: Any = None
        self._senders: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()
        self.max_attempts = max_attempts
        self.max_retry_s = max_retry_s
        self.backoff_s = backoff_s
        self.operation_timeout_s = operation_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self._sleep = sleep
        self._monotonic = monotonic

    @property
    def _secrets(self) -> tuple[str | None, ...]:
        conn = self._settings.servicebus_connection if self._settings else None
        return (conn.get_secret_value() if conn else None,)

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _sender(self, kind: str, name: str) -> tuple[Any, threading.Lock]:
        client = self._get_client()
        key = (kind, name)
        with self._lock:
            if key not in self._senders:
                sender = (
                    client.get_topic_sender(topic_name=name)
                    if kind == "topic"
                    else client.get_queue_sender(queue_name=name)
                )
                self._senders[key] = (sender, threading.Lock())
            return self._senders[key]

    def _forget(self, kind: str, name: str) -> None:
        """Drop a sender after a connection-level fault; the next send opens a fresh link."""
        with self._lock:
            entry = self._senders.pop((kind, name), None)
        if entry is not None:
            try:
                entry[0].close()
            except Exception as err:  # noqa: BLE001 - closing a broken link may fail too; it is gone anyway
                log.debug("closing a %s sender for %s failed: %s", kind, name, type(err).__name__)

    def _send(self, kind: str, name: str, build: Callable[[], ServiceBusMessage], *, action: str) -> None:
        """Send one message (built afresh per attempt), retrying what the SDK marks retryable."""

        def before_sleep(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            log.warning(
                "Service Bus %s: attempt %d failed (%s); retrying",
                action,
                state.attempt_number,
                type(err).__name__,
            )
            self._forget(kind, name)

        retrying, deadline = bounded_retrying(
            retry=is_retryable,
            sleep=self._sleep,
            monotonic=self._monotonic,
            max_attempts=self.max_attempts,
            max_retry_s=self.max_retry_s,
            backoff_s=self.backoff_s,
            before_sleep=before_sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    sender, lock = self._sender(kind, name)
                    message = build()
                    timeout = max(MIN_ATTEMPT_S, min(self.operation_timeout_s, deadline.remaining()))
                    with lock:
                        sender.send_messages(message, timeout=timeout)
        except (PermanentError, TransientError):
            raise
        except Exception as err:
            raise translate(err, action=action, secrets=self._secrets) from err

    def _probe(self, kind: str, name: str) -> str:
        """Readiness of one entity: open a fresh sender link on it and close it, no message sent.

        Opening a sender link is a connection to the namespace, the credential's token put on
        it, and a link attached to the entity: Service Bus refuses the attach when the entity does
        not exist or the identity lacks the ``Send`` claim on it (Azure Service Bus Data Sender on
        the namespace, docs/azure.md section 9), the two things a send needs beside a working
        network. Nothing is written, nothing is received (a peek would need ``Listen``, which the
        app has only on the requests queue, and says nothing about sending), no management call
        (the administration client needs ``Manage``). A fresh link each time, not the cached
        sender: an already open link would answer without asking the service. One attempt
        (the client is built with ``retry_total=0``), the link given ``probe_timeout_s`` to be
        ready. The SDK has no public way to open a sender with a timeout: this calls what its
        ``__enter__`` calls, ``_do_retryable_operation(_open)`` (which also turns the AMQP errors
        into the SDK's ``ServiceBusError`` classes), with ``timeout``."""
        client = self._get_client()
        namespace = str(getattr(client, "fully_qualified_namespace", "") or "the namespace")
        where = f"{kind} {name} on {namespace}"
        try:
            sender = (
                client.get_topic_sender(topic_name=name)
                if kind == "topic"
                else client.get_queue_sender(queue_name=name)
            )
            try:  # what ServiceBusSender.__enter__ does (_open_with_retry), with a timeout
                sender._do_retryable_operation(
                    sender._open, timeout=self.probe_timeout_s, operation_requires_timeout=True
                )
            finally:
                with contextlib.suppress(Exception):  # the link is discarded either way
                    sender.close()
        except Exception as err:
            raise translate(err, action=f"health check of {where}", secrets=self._secrets) from err
        return f"{where}: a sender link opens"

    def close(self) -> None:
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
            client, self._client = self._client, None
        for sender, _ in senders:
            with contextlib.suppress(Exception):  # best effort at shutdown
                sender.close()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def fully_qualified(namespace: str) -> str:
    """``rlq-sb`` → ``rlq-sb.servicebus.windows.net``; a full host name is kept."""
    ns = namespace.strip().removeprefix("sb://").removeprefix("https://").rstrip("/")
    return ns if "." in ns else f"{ns}.servicebus.windows.net"


def client_from_settings(settings: Settings) -> ServiceBusClient:
    """A connection string when one is set (local tools), else the managed identity (Azure).

    ``retry_total=0``: the adapter's retries are the only layer (see the module docstring).
    """
    from azure.servicebus import ServiceBusClient

    if settings.servicebus_connection is not None:
        try:
            return ServiceBusClient.from_connection_string(
                settings.servicebus_connection.get_secret_value(), retry_total=0
            )
        except (ValueError, TypeError, KeyError):
            raise PermanentError(
                "RLQ_SERVICEBUS_CONNECTION is not a Service Bus connection string "
                "(Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…)",
                reason="ServiceBusConfiguration",
            ) from None
    if settings.servicebus_namespace:
        from azure.identity import DefaultAzureCredential

        return ServiceBusClient(
            fully_qualified(settings.servicebus_namespace), DefaultAzureCredential(), retry_total=0
        )
    raise PermanentError(
        "RLQ_BROKER=servicebus needs RLQ_SERVICEBUS_NAMESPACE (<name>.servicebus.windows.net, managed "
        "identity) or RLQ_SERVICEBUS_CONNECTION",
        reason="ServiceBusConfiguration",
    )


# --- the adapters ---------------------------------------------------------------------------


class ServiceBusPublisher(_ServiceBusSide):
    """:class:`shared.ports.Publisher` on the ``training-completed`` topic (+ the reply queue).

    Idempotent on ``message.message_id``: the topic has duplicate detection, so a re-publish by
    the outbox after a lost acknowledgement is dropped by Service Bus.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        client_factory: ClientFactory | None = None,
        topic_name: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(settings=settings, client_factory=client_factory, **options)
        self.topic_name = topic_name or (settings.topic_name if settings else "training-completed")

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: a sender link on the topic opens (see ``_probe``)."""
        return self._probe("topic", self.topic_name)

    def publish(self, message: CompletionMessage, *, reply_to: str | None = None) -> None:
        self._send(
            "topic",
            self.topic_name,
            lambda: completion_message(message),
            action=f"publish {message.message_id} to topic {self.topic_name}",
        )
        if reply_to:
            try:
                self._send(
                    "queue",
                    reply_to,
                    lambda: completion_message(message),
                    action=f"reply {message.message_id} to queue {reply_to}",
                )
            except PermanentError as err:
                raise PermanentError(
                    f"{err.description} — the topic message was published; only the reply to "
                    f"{reply_to!r} failed",
                    reason=err.reason,
                ) from err

    def publish_event(self, event: PromotionEvent) -> None:
        self._send(
            "topic",
            self.topic_name,
            lambda: promotion_message(event),
            action=f"publish {event.message_id} to topic {self.topic_name}",
        )


class ServiceBusRequestSender(_ServiceBusSide):
    """:class:`shared.ports.RequestSender` on the ``training-requests`` queue."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        client_factory: ClientFactory | None = None,
        queue_name: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(settings=settings, client_factory=client_factory, **options)
        self.queue_name = queue_name or (settings.queue_name if settings else "training-requests")

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: a sender link on the queue opens (see ``_probe``)."""
        return self._probe("queue", self.queue_name)

    def send(self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None) -> None:
        when = f" for {scheduled_at.isoformat(timespec='seconds')}" if scheduled_at else ""
        self._send(
            "queue",
            self.queue_name,
            lambda: request_message(body, message_id=message_id, scheduled_at=scheduled_at),
            action=f"send {message_id} to queue {self.queue_name}{when}",
        )


class ServiceBusRejecter(_ServiceBusSide):
    """Keeps a message that can never run where a person finds it, with the reason.

    Same signature as the local twin (which truly dead-letters):
    ``reject(*, message_id, body, reason, description) -> None``.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        client_factory: ClientFactory | None = None,
        queue_name: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(settings=settings, client_factory=client_factory, **options)
        self.queue_name = queue_name or (settings.rejected_queue_name if settings else REJECTED_QUEUE_NAME)

    def reject(self, *, message_id: str, body: bytes, reason: str, description: str) -> None:
        self._send(
            "queue",
            self.queue_name,
            lambda: rejection_message(
                message_id=message_id, body=body, reason=reason, description=description
            ),
            action=f"reject {message_id} to queue {self.queue_name}",
        )
        request_id, reply_to = body_fields(body)
        if reply_to and reply_to != self.queue_name:
            try:
                self._send(
                    "queue",
                    reply_to,
                    lambda: rejection_notice(
                        message_id=message_id, request_id=request_id, reason=reason, description=description
                    ),
                    action=f"notify {reply_to} of rejection {message_id}",
                )
            except PermanentError as err:  # a requester's missing queue must not block the rejection
                log.warning(
                    "rejection of %s kept on %s; reply queue %r refused it: %s",
                    message_id,
                    self.queue_name,
                    reply_to,
                    err.description,
                )
