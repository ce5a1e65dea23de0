"""Traces, metrics and log fields of a request, on the OpenTelemetry API only (one home for their names).

The API does nothing until a process installs the SDK: that happens at the composition edge
(:mod:`shared.telemetry_export`, from ``function_app.py``), by setting. The core calls what is here
and never imports an SDK or an exporter.

One trace per request: the producer's span (``rlq.enqueue``, or the producer's own) → the queue
hop, carried in the message's application properties as the Service Bus SDK's own tracing carries
it (``traceparent`` / ``tracestate``, and ``Diagnostic-Id`` = traceparent) → ``rlq.intake`` →
``rlq.ensure_compute`` → ``rlq.submit``; the span that claimed the run is kept on its record
(:attr:`shared.contracts.run.RunRecord.trace_context`), so every later poll that changed the run
(``rlq.poll``) joins the same trace → ``rlq.publish`` → the topic hop → ``rlq.notify`` → one
``rlq.delivery`` per webhook / Teams target. Every span carries ``rlq.request_id``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.contracts.completion import Delivery

# --- names ------------------------------------------------------------------------------------

SCOPE = "rlq"

ENQUEUE = "rlq.enqueue"  # POST /api/trainings, rlq submit: validate, record, send (producer)
INTAKE = "rlq.intake"  # the queue trigger: one delivery of a request (consumer)
ENSURE_COMPUTE = "rlq.ensure_compute"
SUBMIT = "rlq.submit"  # find the job of this attempt, or submit it
POLL = "rlq.poll"  # one poll of one run that changed it (exported only then)
PUBLISH = "rlq.publish"  # the completion message onto the topic (producer)
NOTIFY = "rlq.notify"  # the topic trigger: deliver one completion (consumer)
DELIVERY = "rlq.delivery"  # one webhook / Teams target's outcome

PRODUCER = SpanKind.PRODUCER  # a span that sends a message
CONSUMER = SpanKind.CONSUMER  # a span that handles one

REQUEST_ID = "rlq.request_id"
RUN_ID = "rlq.run_id"
MESSAGE_ID = "messaging.message.id"
STATE = "rlq.state"
OUTCOME = "rlq.outcome"
REASON = "rlq.reason"
VIA = "rlq.via"  # how a request came in: "api" (enqueue) or "queue" (a producer's own message)

# The application properties that carry the trace context across a queue hop, as the Service Bus
# SDK writes and reads them (azure/servicebus/_common/tracing.py: trace_message, get_receive_links).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DIAGNOSTIC_ID = "Diagnostic-Id"

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer(SCOPE)
_meter = metrics.get_meter(SCOPE)

# --- metrics ----------------------------------------------------------------------------------

REQUESTS_ACCEPTED = _meter.create_counter(
    "rlq.requests.accepted", unit="{request}", description="Requests recorded as valid, by rlq.via."
)
REQUESTS_REFUSED = _meter.create_counter(
    "rlq.requests.refused",
    unit="{request}",
    description="Requests refused for good (400 / dead letter), by rlq.via and rlq.reason.",
)
QUEUE_WAIT = _meter.create_histogram(
    "rlq.queue.wait", unit="s", description="Request recorded (enqueued) to its job submitted."
)
FIRST_ITERATION = _meter.create_histogram(
    "rlq.run.first_iteration", unit="s", description="Request recorded (enqueued) to its first iteration."
)
RUN_DURATION = _meter.create_histogram(
    "rlq.run.duration", unit="s", description="Job submitted to the run's end, by rlq.state."
)
DELIVERIES = _meter.create_counter(
    "rlq.deliveries", unit="{delivery}", description="Webhook / Teams deliveries, by rlq.outcome."
)
DEAD_LETTERS = _meter.create_counter(
    "rlq.dead_letters", unit="{message}", description="Requests sent to the dead-letter queue, by rlq.reason."
)
POLL_TICK = _meter.create_histogram("rlq.poll.tick", unit="s", description="One poll tick's wall time.")

_run_counts: Callable[[], Mapping[str, int]] | None = None


def _observe_runs(_options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
    counts = _run_counts
    if counts is None:
        return
    try:
        found = counts()
    except Exception as err:  # noqa: BLE001 - a store that cannot count skips one collection
        logging.getLogger(__name__).warning("runs by state not counted: %s", err)
        return
    for state, n in found.items():
        yield metrics.Observation(n, {STATE: state})


RUNS = _meter.create_observable_gauge(
    "rlq.runs", callbacks=[_observe_runs], unit="{run}", description="Run records by rlq.state."
)


def count_runs_with(counts: Callable[[], Mapping[str, int]] | None) -> None:
    """Where the ``rlq.runs`` gauge reads its numbers (the service's run store); the last one set wins."""
    global _run_counts
    _run_counts = counts


# --- log fields -------------------------------------------------------------------------------

_log_fields: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "rlq_log_fields", default=(None, None)
)


def log_fields() -> dict[str, str]:
    """``request_id`` / ``run_id`` of the request being worked on in this thread (empty: none)."""
    request_id, run_id = _log_fields.get()
    fields = {}
    if request_id:
        fields["request_id"] = request_id
    if run_id:
        fields["run_id"] = run_id
    return fields


def install_log_fields() -> None:
    """Every log record made from now on carries ``request_id`` / ``run_id`` as attributes (None
    outside a request), which the OpenTelemetry log handler exports as the record's attributes."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_rlq", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        request_id, run_id = _log_fields.get()
        record.request_id = request_id
        record.run_id = run_id
        return record

    factory._rlq = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# --- the trace context across a queue hop -------------------------------------------------------


def inject() -> dict[str, str]:
    """The current span's W3C trace context as message application properties (empty: no span)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    if TRACEPARENT in carrier:
        carrier[DIAGNOSTIC_ID] = carrier[TRACEPARENT]
    return carrier


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else None


def extract(properties: Mapping[Any, Any] | None) -> otel_context.Context | None:
    """The parent context a message carries (``traceparent``, else ``Diagnostic-Id``, as the Service
    Bus SDK reads it; keys and values as text or bytes); None when it carries none."""
    if not properties:
        return None
    found: dict[str, str] = {}
    for key, value in properties.items():
        name, text = _text(key), _text(value)
        if name in (TRACEPARENT, TRACESTATE, DIAGNOSTIC_ID) and text:
            found[name] = text
    parent = found.get(TRACEPARENT) or found.get(DIAGNOSTIC_ID)
    if not parent:
        return None
    carrier = {TRACEPARENT: parent}
    if TRACESTATE in found:
        carrier[TRACESTATE] = found[TRACESTATE]
    ctx = _propagator.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


# --- spans --------------------------------------------------------------------------------------


def _tracing() -> bool:
    """Whether a tracer provider is installed (the SDK's): until then spans are skipped outright,
    so the default (no exporter) pays one lookup per span instead of the API's no-op span."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _attributes(
    request_id: str | None, run_id: str | None, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {k: v for k, v in (extra or {}).items() if v is not None}
    if request_id:
        attributes[REQUEST_ID] = request_id
    if run_id:
        attributes[RUN_ID] = run_id
    return attributes


@contextmanager
def span(
    name: str,
    *,
    request_id: str | None = None,
    run_id: str | None = None,
    parent: Mapping[Any, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A span, current for the block, and the block's log records carry ``request_id`` / ``run_id``.

    ``parent``: the trace context of a message or a run record (application properties); None: the
    current span's child. An exception leaving the block is recorded on the span (status ERROR).
    """
    before = _log_fields.get()
    token = _log_fields.set((request_id or before[0], run_id or before[1]))
    if not _tracing():
        try:
            yield trace.INVALID_SPAN
        finally:
            _log_fields.reset(token)
        return
    ctx = extract(parent) if parent is not None else None
    try:
        with _tracer.start_as_current_span(
            name, context=ctx, kind=kind, attributes=_attributes(request_id, run_id, attributes)
        ) as current:
            yield current
    finally:
        _log_fields.reset(token)


def name_request(current: trace.Span, request_id: str | None, run_id: str | None = None) -> None:
    """Label a span (and the block's log records) once its request is known."""
    if request_id:
        current.set_attribute(REQUEST_ID, request_id)
    if run_id:
        current.set_attribute(RUN_ID, run_id)
    before = _log_fields.get()
    _log_fields.set((request_id or before[0], run_id or before[1]))


class PollSpan:
    """``rlq.poll`` of one run: exported only when :meth:`changed` says the poll changed the run
    (or it raised), so a run's trace holds its transitions, not every quiet tick."""

    def __init__(self, current: trace.Span) -> None:
        self.span = current
        self.keep = False

    def changed(self, outcome: object) -> None:
        if outcome is not None:
            self.keep = True
            self.span.set_attribute(OUTCOME, str(getattr(outcome, "value", outcome)))


@contextmanager
def poll_span(request_id: str, run_id: str | None, parent: Mapping[str, str] | None) -> Iterator[PollSpan]:
    """The poll of one run, in its request's trace (``parent``: the context kept on its record)."""
    if not _tracing():
        token = _log_fields.set((request_id, run_id))
        try:
            yield PollSpan(trace.INVALID_SPAN)
        finally:
            _log_fields.reset(token)
        return
    current = _tracer.start_span(
        POLL, context=extract(parent), attributes=_attributes(request_id, run_id, None)
    )
    handle = PollSpan(current)
    token = _log_fields.set((request_id, run_id))
    try:
        with trace.use_span(current, end_on_exit=False, record_exception=True, set_status_on_exception=True):
            yield handle
    except BaseException:
        handle.keep = True
        raise
    finally:
        _log_fields.reset(token)
        if handle.keep:  # a span never ended is never exported: a quiet poll leaves nothing
            current.end()


def record_deliveries(deliveries: Sequence[Delivery], *, started_ns: int | None = None) -> None:
    """One ``rlq.delivery`` span (a child of the current one) and one ``rlq.deliveries`` point per
    delivery: its outcome, attempts, HTTP status and the target's host (never its path or query,
    which may hold a key)."""
    tracing = _tracing()
    for d in deliveries:
        outcome = "ok" if d.ok else "failed"
        DELIVERIES.add(1, {OUTCOME: outcome})
        if not tracing:
            continue
        end_ns = int(d.at.timestamp() * 1e9)
        attributes: dict[str, Any] = {
            OUTCOME: outcome,
            "rlq.attempts": int(d.attempts),
            "server.address": urlsplit(str(d.target)).hostname or "",
        }
        if d.status_code is not None:
            attributes["http.response.status_code"] = int(d.status_code)
        child = _tracer.start_span(DELIVERY, start_time=started_ns, attributes=attributes)
        if not d.ok:
            child.set_status(Status(StatusCode.ERROR, str(d.error or "not delivered")[:200]))
        child.end(end_time=max(end_ns, started_ns or 0))


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds, None when either is unknown or the clock went back."""
    if start is None or end is None:
        return None
    s = (end - start).total_seconds()
    return s if s >= 0 else None
