"""Both brokers carry the sender's trace context in the message's application properties, under the
names the Service Bus SDK's own tracing uses (traceparent, tracestate, Diagnostic-Id)."""

from __future__ import annotations

from opentelemetry import trace

from shared import telemetry
from shared.adapters.broker.servicebus import completion_message, request_message
from shared.adapters.broker.sqlite_broker import SqliteBroker, SqlitePublisher, SqliteRequestSender
from shared.contracts.completion import CompletionMessage


def _traceparent(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _completion() -> CompletionMessage:
    return CompletionMessage.model_validate(
        {"message_id": "c-1:completed", "request_id": "c-1", "status": "Completed", "experiment": "x"}
    )


def test_sqlite_queue_and_topic_carry_the_senders_context(tmp_path, sdk):
    broker = SqliteBroker(tmp_path / "q.sqlite3")
    broker.create_queue("q")
    broker.create_topic("t")
    broker.create_subscription("t", "s")
    SqliteRequestSender(broker, "q").send(b"{}", message_id="outside")  # no span: nothing carried
    with telemetry.span("test.producer") as span:
        SqliteRequestSender(broker, "q").send(b"{}", message_id="inside")
        SqlitePublisher(broker, "t").publish(_completion())
    outside, inside = broker.receive("q", max_messages=2)
    (published,) = broker.receive("t", subscription="s")
    assert "traceparent" not in outside.application_properties
    for props in (inside.application_properties, published.application_properties):
        assert props["traceparent"] == props["Diagnostic-Id"] == _traceparent(span)
    assert published.application_properties["status"] == "Completed"  # its own properties kept


def test_service_bus_messages_carry_the_senders_context(sdk):
    with telemetry.span("test.producer") as span:
        request = request_message(b"{}", message_id="r-1")
        completion = completion_message(_completion())
    for message in (request, completion):
        props = message.application_properties
        assert props["traceparent"] == props["Diagnostic-Id"] == _traceparent(span)
    assert request.application_properties["rlq_message_id"] == "r-1"
    assert "traceparent" not in request_message(b"{}", message_id="r-2").application_properties


def test_a_received_context_is_read_as_the_sdk_reads_it(sdk):
    """traceparent first, else Diagnostic-Id; keys and values as bytes (AMQP) or text (Functions)."""
    with telemetry.span("test.producer") as span:
        sent = telemetry.inject()
    parent = _traceparent(span)
    for props in (
        sent,
        {b"Diagnostic-Id": parent.encode()},
        {"Diagnostic-Id": "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "traceparent": parent},
    ):
        with telemetry.span("test.consumer", parent=props) as child:
            pass
        assert child.parent is not None and child.parent.span_id == span.get_span_context().span_id
    assert telemetry.extract({"traceparent": "garbage"}) is None
    assert telemetry.extract({}) is None and telemetry.extract(None) is None
