"""The Service Bus adapters: the SDK messages they build, retries, and error translation.

The network is replaced by a recording client (it only remembers what it was asked to send and
can be told to fail); every assertion is on the real ``azure.servicebus.ServiceBusMessage``
objects the adapter built. One test drives the real SDK client against a closed loopback port.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)

from shared.adapters.broker.servicebus import (
    MAX_DESCRIPTION_BYTES,
    MAX_REJECTED_BODY_BYTES,
    ServiceBusPublisher,
    ServiceBusRejecter,
    ServiceBusRequestSender,
    client_from_settings,
    fully_qualified,
    sb_message_id,
)
from shared.contracts.completion import CompletionMessage
from shared.errors import PermanentError, TransientError
from shared.ports import Publisher, RequestSender
from shared.settings import Settings

SECRET_KEY = "c2VjcmV0LWtleS1kby1ub3QtbGVhaw=="
CONN = f"Endpoint=sb://rlq-test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={SECRET_KEY}"


class RecordingSender:
    def __init__(self, client: RecordingClient, kind: str, name: str) -> None:
        self.client, self.kind, self.name = client, kind, name
        self.closed = False

    def send_messages(self, message: ServiceBusMessage, *, timeout: float | None = None) -> None:
        self.client.attempts.append((self.kind, self.name))
        self.client.timeouts.append(timeout)
        if self.client.attempt_takes is not None:  # the SDK waits out its operation timeout
            self.client.attempt_takes(timeout)
        if self.client.failures:
            raise self.client.failures.pop(0)
        self.client.sent.append((self.kind, self.name, message))

    def _do_retryable_operation(self, operation: Callable, timeout: float | None = None, **kwargs: object):
        assert kwargs == {"operation_requires_timeout": True}  # else the SDK drops the timeout
        return operation(timeout=timeout)  # retry_total=0: one attempt

    def _open(self, timeout: float | None = None) -> None:  # the link only: what a readiness probe asks
        self.client.opens.append((self.kind, self.name, timeout))
        if self.client.open_failures:
            raise self.client.open_failures.pop(0)

    def close(self) -> None:
        self.closed = True


class RecordingClient:
    """Stands in for ``ServiceBusClient``: records senders opened and messages sent."""

    fully_qualified_namespace = "rlq-test.servicebus.windows.net"

    def __init__(
        self,
        failures: list[BaseException] | None = None,
        attempt_takes: Callable[[float | None], None] | None = None,
    ) -> None:
        self.failures = list(failures or [])
        self.attempt_takes = attempt_takes
        self.timeouts: list[float | None] = []
        self.sent: list[tuple[str, str, ServiceBusMessage]] = []
        self.attempts: list[tuple[str, str]] = []
        self.senders: list[RecordingSender] = []
        self.opens: list[tuple[str, str, float | None]] = []
        self.open_failures: list[BaseException] = []

    def get_topic_sender(self, *, topic_name: str) -> RecordingSender:
        self.senders.append(RecordingSender(self, "topic", topic_name))
        return self.senders[-1]

    def get_queue_sender(self, *, queue_name: str) -> RecordingSender:
        self.senders.append(RecordingSender(self, "queue", queue_name))
        return self.senders[-1]

    def close(self) -> None:
        pass


class FakeTime:
    """``sleep`` advances ``monotonic``: retry timing without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def body_of(message: ServiceBusMessage) -> bytes:
    return b"".join(message.body)


def completion(**fields: object) -> CompletionMessage:
    base: dict[str, object] = {
        "message_id": "req-7:completed",
        "request_id": "req-7",
        "run_id": "run-1",
        "status": "Completed",
        "stop_reason": "reward_reached",
        "experiment": "pong",
        "algorithm": "IMPALA",
        "env": "PongNoFrameskip-v4",
        "final_reward": 18.4,
        "best_reward": 19.0,
        "iterations": 120,
        "checkpoint_path": "azureml://subscriptions/s/resourcegroups/g/workspaces/w/datastores/"
        "workspaceartifactstore/paths/ExperimentRun/dcid.run-1/outputs/checkpoints/final",
    }
    base.update(fields)
    return CompletionMessage(**base)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make(cls, client: RecordingClient, fake_time: FakeTime, **options):
    settings = Settings(servicebus_connection=CONN, _env_file=None)
    return cls(
        settings=settings,
        client_factory=lambda: client,
        sleep=fake_time.sleep,
        monotonic=fake_time.monotonic,
        **options,
    )


# --- publishing ------------------------------------------------------------------------------


def test_publisher_and_sender_satisfy_the_ports(fake_time: FakeTime) -> None:
    client = RecordingClient()
    assert isinstance(make(ServiceBusPublisher, client, fake_time), Publisher)
    assert isinstance(make(ServiceBusRequestSender, client, fake_time), RequestSender)


def test_publish_builds_the_topic_message(fake_time: FakeTime) -> None:
    client = RecordingClient()
    msg = completion()
    make(ServiceBusPublisher, client, fake_time).publish(msg)

    [(kind, entity, sent)] = client.sent
    assert (kind, entity) == ("topic", "training-completed")
    assert isinstance(sent, ServiceBusMessage)
    assert sent.message_id == "req-7:completed"
    assert sent.correlation_id == "req-7"
    assert sent.content_type == "application/json"
    props = sent.application_properties
    assert props["status"] == "Completed"
    assert props["experiment"] == "pong"
    assert props["env"] == "PongNoFrameskip-v4"
    assert props["stop_reason"] == "reward_reached"
    decoded = CompletionMessage.model_validate_json(body_of(sent))
    assert decoded == msg


def test_publish_also_replies_to_the_reply_queue(fake_time: FakeTime) -> None:
    client = RecordingClient()
    make(ServiceBusPublisher, client, fake_time).publish(completion(), reply_to="drift-detector-replies")
    assert [(k, e) for k, e, _ in client.sent] == [
        ("topic", "training-completed"),
        ("queue", "drift-detector-replies"),
    ]
    topic_msg, reply_msg = client.sent[0][2], client.sent[1][2]
    assert reply_msg is not topic_msg  # a fresh SDK message per entity
    assert reply_msg.message_id == topic_msg.message_id == "req-7:completed"
    assert body_of(reply_msg) == body_of(topic_msg)


def test_senders_are_opened_once_and_reused(fake_time: FakeTime) -> None:
    client = RecordingClient()
    pub = make(ServiceBusPublisher, client, fake_time)
    for i in range(3):
        pub.publish(completion(message_id=f"r{i}:completed", request_id=f"r{i}"))
    assert [(s.kind, s.name) for s in client.senders] == [("topic", "training-completed")]
    assert [m.message_id for _, _, m in client.sent] == ["r0:completed", "r1:completed", "r2:completed"]


def test_client_is_built_lazily_once(fake_time: FakeTime) -> None:
    built: list[RecordingClient] = []

    def factory() -> RecordingClient:
        built.append(RecordingClient())
        return built[-1]

    pub = ServiceBusPublisher(client_factory=factory, sleep=fake_time.sleep, monotonic=fake_time.monotonic)
    assert built == []
    pub.publish(completion())
    pub.publish(completion(message_id="b:completed", request_id="b"))
    assert len(built) == 1 and len(built[0].sent) == 2


def test_long_ids_are_shortened_deterministically(fake_time: FakeTime) -> None:
    long_id = "r" + "x" * 127  # 128 characters: a valid request_id
    client = RecordingClient()
    make(ServiceBusPublisher, client, fake_time).publish(
        completion(message_id=f"{long_id}:completed", request_id=long_id)
    )
    sent = client.sent[0][2]
    assert len(sent.message_id) <= 128
    assert sent.message_id == sb_message_id(f"{long_id}:completed")
    assert sent.message_id != sb_message_id(f"{long_id[:-1]}y:completed")
    assert sent.correlation_id == long_id  # exactly 128: kept as is
    assert sent.application_properties["rlq_message_id"] == f"{long_id}:completed"


# --- sending requests ------------------------------------------------------------------------


def test_send_puts_the_request_on_the_intake_queue(fake_time: FakeTime) -> None:
    client = RecordingClient()
    body = json.dumps({"request_id": "r-1", "env": "CartPole-v1"}).encode()
    make(ServiceBusRequestSender, client, fake_time).send(body, message_id="r-1")
    [(kind, entity, sent)] = client.sent
    assert (kind, entity) == ("queue", "training-requests")
    assert sent.message_id == "r-1"
    assert body_of(sent) == body
    assert sent.scheduled_enqueue_time_utc is None


def test_send_schedules_in_utc(fake_time: FakeTime) -> None:
    client = RecordingClient()
    sender = make(ServiceBusRequestSender, client, fake_time)
    plus_two = timezone(timedelta(hours=2))
    sender.send(b"{}", message_id="r-1:deferred:1", scheduled_at=datetime(2026, 3, 1, 14, 0, tzinfo=plus_two))
    sender.send(b"{}", message_id="r-1:deferred:2", scheduled_at=datetime(2026, 3, 1, 12, 5))  # naive = UTC
    first, second = (m for _, _, m in client.sent)
    assert first.scheduled_enqueue_time_utc == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert second.scheduled_enqueue_time_utc == datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    assert [first.message_id, second.message_id] == ["r-1:deferred:1", "r-1:deferred:2"]


# --- retries and errors ----------------------------------------------------------------------


def test_server_busy_twice_then_sent(fake_time: FakeTime) -> None:
    client = RecordingClient(failures=[ServiceBusServerBusyError(), ServiceBusServerBusyError()])
    make(ServiceBusPublisher, client, fake_time).publish(completion())
    assert len(client.attempts) == 3
    assert [m.message_id for _, _, m in client.sent] == ["req-7:completed"]
    assert len(fake_time.sleeps) == 2 and all(s > 0 for s in fake_time.sleeps)
    # after each retryable fault the sender was dropped and a fresh link opened
    assert [s.closed for s in client.senders] == [True, True, False]


def test_retries_are_bounded_by_attempts(fake_time: FakeTime) -> None:
    client = RecordingClient(failures=[ServiceBusConnectionError() for _ in range(10)])
    pub = make(ServiceBusPublisher, client, fake_time, max_attempts=4, max_retry_s=3600)
    with pytest.raises(TransientError) as info:
        pub.publish(completion())
    assert len(client.attempts) == 4
    assert client.sent == []
    assert isinstance(info.value.__cause__, ServiceBusConnectionError)


def test_retries_are_bounded_by_total_time(fake_time: FakeTime) -> None:
    client = RecordingClient(failures=[ServiceBusServerBusyError() for _ in range(100)])
    pub = make(ServiceBusPublisher, client, fake_time, max_attempts=100, max_retry_s=10, backoff_s=1)
    with pytest.raises(TransientError):
        pub.publish(completion())
    assert 3 <= len(client.attempts) < 100
    # the waits are cut to the budget: the last attempt starts with at least a second left
    assert 5 <= sum(fake_time.sleeps) <= 10 - 1 + 1e-9  # (float sums of jittered waits)


def test_retries_and_their_timeouts_fit_one_total_budget(fake_time: FakeTime) -> None:
    """Each attempt waits out its operation timeout (a hung link): the sum stays in the budget."""
    client = RecordingClient(
        failures=[ServiceBusConnectionError() for _ in range(100)],
        attempt_takes=lambda timeout: fake_time.sleep(timeout or 0),
    )
    pub = make(
        ServiceBusPublisher, client, fake_time, max_attempts=100, max_retry_s=45, operation_timeout_s=30
    )
    start = fake_time.now
    with pytest.raises(TransientError):
        pub.publish(completion())
    assert fake_time.now - start <= 45 + 1e-9
    assert len(client.attempts) >= 2
    assert client.timeouts[0] == 30
    assert all(t is not None and 0 < t <= 30 for t in client.timeouts)


@pytest.mark.parametrize(
    "error",
    [
        ServiceBusAuthorizationError(message="Unauthorized access. 'Send' claim(s) are required"),
        ServiceBusAuthenticationError(message="ExpiredToken: the token is expired"),
    ],
)
def test_auth_errors_are_retried_as_the_sdk_marks_them(fake_time: FakeTime, error: Exception) -> None:
    """A role assignment made by the deploy takes minutes to reach Service Bus: try again."""
    assert error._retryable is True  # azure/servicebus/exceptions.py: retryable=True
    client = RecordingClient(failures=[error, error])
    make(ServiceBusPublisher, client, fake_time).publish(completion())
    assert len(client.attempts) == 3
    assert [m.message_id for _, _, m in client.sent] == ["req-7:completed"]


def test_auth_error_that_outlasts_the_budget_is_transient_with_the_role_to_check(fake_time: FakeTime) -> None:
    client = RecordingClient(
        failures=[ServiceBusAuthorizationError(message=f"Unauthorized access for {CONN}") for _ in range(10)]
    )
    pub = make(ServiceBusPublisher, client, fake_time, max_attempts=3)
    with pytest.raises(TransientError) as info:
        pub.publish(completion())
    assert len(client.attempts) == 3
    text = str(info.value)
    assert SECRET_KEY not in text and CONN not in text
    assert "ServiceBusAuthorizationError" in text
    assert "Azure Service Bus Data Sender" in text and "propagat" in text


@pytest.mark.parametrize(
    "error",
    [
        MessagingEntityNotFoundError(message=f"entity not found; connection {CONN}"),
        MessageSizeExceededError(message=f"too big SharedAccessKey={SECRET_KEY}"),
    ],
)
def test_non_retryable_errors_are_permanent_and_secret_free(fake_time: FakeTime, error: Exception) -> None:
    client = RecordingClient(failures=[error])
    with pytest.raises(PermanentError) as info:
        make(ServiceBusPublisher, client, fake_time).publish(completion())
    assert len(client.attempts) == 1
    assert fake_time.sleeps == []
    text = str(info.value)
    assert SECRET_KEY not in text and CONN not in text
    assert type(error).__name__ in text
    assert info.value.reason == "ServiceBus" + type(error).__name__


def test_missing_reply_queue_says_the_topic_message_landed(fake_time: FakeTime) -> None:
    client = RecordingClient()
    pub = make(ServiceBusPublisher, client, fake_time)
    original = client.get_queue_sender

    def queue_sender(*, queue_name: str) -> RecordingSender:
        sender = original(queue_name=queue_name)
        client.failures.append(MessagingEntityNotFoundError(message="no such queue"))
        return sender

    client.get_queue_sender = queue_sender  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="topic message was published"):
        pub.publish(completion(), reply_to="gone")
    assert [(k, e) for k, e, _ in client.sent] == [("topic", "training-completed")]


def test_real_sdk_connection_failure_is_transient_and_secret_free() -> None:
    """The real client, against a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=send;SharedAccessKey={SECRET_KEY}"
    settings = Settings(servicebus_connection=conn, _env_file=None)
    sleeps: list[float] = []
    pub = ServiceBusPublisher(
        settings=settings,
        max_attempts=2,
        sleep=sleeps.append,
        client_factory=lambda: ServiceBusClient.from_connection_string(conn, retry_total=0),
        operation_timeout_s=5,
    )
    try:
        with pytest.raises(TransientError) as info:
            pub.publish(completion())
    finally:
        pub.close()
    assert len(sleeps) == 1  # two attempts
    assert SECRET_KEY not in str(info.value)


# --- settings ----------------------------------------------------------------------------------


def test_client_from_connection_string_and_namespace() -> None:
    client = client_from_settings(Settings(servicebus_connection=CONN, _env_file=None))
    assert client.fully_qualified_namespace == "rlq-test.servicebus.windows.net"
    assert client._config.retry_total == 0  # one retry layer: the adapter's, not the SDK's on top
    client.close()
    client = client_from_settings(Settings(servicebus_namespace="rlq-prod", _env_file=None))
    assert client.fully_qualified_namespace == "rlq-prod.servicebus.windows.net"
    assert client._config.retry_total == 0
    client.close()
    assert fully_qualified("sb://rlq-x.servicebus.windows.net/") == "rlq-x.servicebus.windows.net"


def test_bad_connection_string_is_permanent_without_echoing_it() -> None:
    bad = f"SharedAccessKey={SECRET_KEY};nonsense"
    with pytest.raises(PermanentError) as info:
        client_from_settings(Settings(servicebus_connection=bad, _env_file=None))
    assert SECRET_KEY not in str(info.value) and "RLQ_SERVICEBUS_CONNECTION" in str(info.value)


def test_no_broker_settings_is_a_clear_error() -> None:
    with pytest.raises(PermanentError, match="RLQ_SERVICEBUS_NAMESPACE"):
        client_from_settings(Settings(_env_file=None))


# --- rejections --------------------------------------------------------------------------------


def test_reject_keeps_the_body_with_reason_and_description(fake_time: FakeTime) -> None:
    client = RecordingClient()
    body = b'{"request_id": "bad-1", "env": "Doom-v0", "reply_to": "requester-replies"}'
    description = "env: 'Doom-v0' is not an allowed environment; " + "é" * 3000  # 6 KB of UTF-8
    make(ServiceBusRejecter, client, fake_time).reject(
        message_id="m-1", body=body, reason="InvalidRequest", description=description
    )
    (k1, e1, kept), (k2, e2, notice) = client.sent
    assert (k1, e1) == ("queue", "training-rejected")
    assert body_of(kept) == body
    assert kept.message_id == "m-1:rejected"
    assert kept.correlation_id == "m-1"
    assert kept.application_properties["reason"] == "InvalidRequest"
    desc = kept.application_properties["description"]
    assert len(desc.encode("utf-8")) <= MAX_DESCRIPTION_BYTES
    assert desc.startswith("env: 'Doom-v0' is not an allowed environment")
    # the requester's reply queue hears about it
    assert (k2, e2) == ("queue", "requester-replies")
    payload = json.loads(body_of(notice))
    assert payload["status"] == "Rejected" and payload["request_id"] == "bad-1"
    assert payload["reason"] == "InvalidRequest"
    assert notice.message_id == "m-1:rejected"


@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8", b"[1, 2]", b'{"reply_to": "bad queue name!"}', b"{"])
def test_reject_unusable_body_goes_to_the_rejected_queue_only(fake_time: FakeTime, body: bytes) -> None:
    client = RecordingClient()
    make(ServiceBusRejecter, client, fake_time).reject(
        message_id="m-2", body=body, reason="InvalidRequest", description="malformed"
    )
    [(kind, entity, kept)] = client.sent
    assert (kind, entity) == ("queue", "training-rejected")
    assert body_of(kept) == body


def test_reject_truncates_a_body_too_large_for_the_queue(fake_time: FakeTime) -> None:
    client = RecordingClient()
    body = b"x" * (MAX_REJECTED_BODY_BYTES + 5000)
    make(ServiceBusRejecter, client, fake_time).reject(
        message_id="m-3", body=body, reason="InvalidRequest", description="body too large"
    )
    kept = client.sent[0][2]
    assert len(body_of(kept)) == MAX_REJECTED_BODY_BYTES
    assert kept.application_properties["body_truncated"] is True
    assert kept.application_properties["body_bytes"] == len(body)


def test_reject_survives_a_missing_reply_queue(fake_time: FakeTime) -> None:
    client = RecordingClient()
    rejecter = make(ServiceBusRejecter, client, fake_time)
    original = client.get_queue_sender

    def queue_sender(*, queue_name: str) -> RecordingSender:
        if queue_name == "missing-replies":
            client.failures.append(MessagingEntityNotFoundError(message="not found"))
        return original(queue_name=queue_name)

    client.get_queue_sender = queue_sender  # type: ignore[method-assign]
    rejecter.reject(
        message_id="m-4",
        body=b'{"reply_to": "missing-replies"}',
        reason="Forbidden",
        description="over the node cap",
    )
    assert [(k, e) for k, e, _ in client.sent] == [("queue", "training-rejected")]


def test_reject_transient_failure_propagates_for_redelivery(fake_time: FakeTime) -> None:
    client = RecordingClient(failures=[ServiceBusServerBusyError() for _ in range(10)])
    rejecter = make(ServiceBusRejecter, client, fake_time, max_attempts=3)
    with pytest.raises(TransientError):
        rejecter.reject(message_id="m-5", body=b"{}", reason="InvalidRequest", description="x")
    assert len(client.attempts) == 3


# --- readiness: a sender link opens, nothing is sent ----------------------------------------------


def test_check_opens_a_fresh_sender_link_on_the_entity_and_sends_nothing(fake_time: FakeTime) -> None:
    from shared.ports import ReadinessProbe

    client = RecordingClient()
    sender = make(ServiceBusRequestSender, client, fake_time, probe_timeout_s=4)
    publisher = make(ServiceBusPublisher, client, fake_time)
    assert isinstance(sender, ReadinessProbe) and isinstance(publisher, ReadinessProbe)
    assert sender.check() == "queue training-requests on rlq-test.servicebus.windows.net: a sender link opens"
    sender.send(b"{}", message_id="r-1")  # the cached sender for sends is a different one
    assert "topic training-completed" in publisher.check()
    sender.check()
    assert client.opens == [
        ("queue", "training-requests", 4),
        ("topic", "training-completed", 5.0),
        ("queue", "training-requests", 4),
    ]
    assert [m.message_id for _, _, m in client.sent] == ["r-1"]  # the checks sent nothing
    probes = [s for s in client.senders if any(o[:2] == (s.kind, s.name) for o in client.opens)]
    assert [s.closed for s in client.senders] == [True, False, True, True]  # each probe link closed
    assert len(probes) == 4 and fake_time.sleeps == []


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (
            ServiceBusAuthorizationError(message=f"Unauthorized access. 'Send' claim(s) are required {CONN}"),
            TransientError,
            "Azure Service Bus Data Sender",
        ),
        (
            MessagingEntityNotFoundError(message="The messaging entity could not be found"),
            PermanentError,
            "create",
        ),
        (
            ServiceBusConnectionError(message=f"connection refused SharedAccessKey={SECRET_KEY}"),
            TransientError,
            "",
        ),
    ],
)
def test_check_fails_once_without_retries_naming_the_entity_and_no_secret(
    fake_time: FakeTime, error: Exception, kind: type[Exception], words: str
) -> None:
    client = RecordingClient()
    client.open_failures.append(error)
    with pytest.raises(kind) as info:
        make(ServiceBusRequestSender, client, fake_time).check()
    text = str(info.value)
    assert "health check of queue training-requests on rlq-test.servicebus.windows.net" in text
    assert type(error).__name__ in text and words in text
    assert SECRET_KEY not in text and CONN not in text
    assert len(client.opens) == 1 and fake_time.sleeps == []  # one attempt
    assert [s.closed for s in client.senders] == [True]


def test_the_sdk_sender_opens_its_link_with_a_timeout() -> None:
    """The probe relies on ``_do_retryable_operation(_open, timeout=…, operation_requires_timeout=True)``,
    what ``__enter__`` runs (``_open_with_retry``) plus the timeout: no public equivalent."""
    import inspect

    from azure.servicebus import ServiceBusSender

    assert "timeout" in inspect.signature(ServiceBusSender._open).parameters
    assert "timeout" in inspect.signature(ServiceBusSender._do_retryable_operation).parameters
    assert "self._do_retryable_operation(self._open, operation_requires_timeout=True" in inspect.getsource(
        ServiceBusSender._open_with_retry
    )


def test_real_sdk_check_against_a_closed_port_is_transient_bounded_and_secret_free() -> None:
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=send;SharedAccessKey={SECRET_KEY}"
    sender = ServiceBusRequestSender(
        settings=Settings(servicebus_connection=conn, _env_file=None), probe_timeout_s=3
    )
    started = time.monotonic()
    try:
        with pytest.raises(TransientError) as info:
            sender.check()
    finally:
        sender.close()
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert "health check of queue training-requests on 127.0.0.1" in text
    assert "ServiceBusConnectionError" in text and SECRET_KEY not in text
