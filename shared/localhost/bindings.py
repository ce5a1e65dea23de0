"""How a function app's functions are bound to the local host's triggers, and what they are handed.

:func:`load_functions` reads the app's function table (triggers, output bindings, ``%SETTING%``
expressions) into :class:`HostedFunction` rows; :func:`call_function` invokes one as the Python
worker does (keyword arguments by binding name, ``context`` when asked for, coroutines awaited);
:func:`to_function_message` fills the runtime's ``ServiceBusMessage`` from a broker message;
:func:`as_response` turns what an HTTP function returned into an ``HttpResponse``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions import meta as func_meta
from azure.functions.servicebus import ServiceBusMessage

from shared.localhost.config import LocalHostError, Route, Schedule

SB_TRIGGER = "serviceBusTrigger"
TIMER_TRIGGER = "timerTrigger"
HTTP_TRIGGER = "httpTrigger"
SB_OUTPUT = "serviceBus"
HTTP_OUTPUT = "http"


# --- the function table ----------------------------------------------------------------------


@dataclass
@dataclass
class OutputBinding:
    """A Service Bus output binding: what the handler sets is sent after it returns."""

    name: str
    entity: str


@dataclass
class HostedFunction:
    name: str
    trigger_type: str
    arg_name: str
    user_function: Callable[..., Any]
    outputs: list[OutputBinding] = field(default_factory=list)
    wants_context: bool = False
    # serviceBusTrigger
    entity: str | None = None
    subscription: str | None = None
    # timerTrigger
    schedule: Schedule | None = None
    run_on_startup: bool = False
    next_due: float = 0.0
    running: threading.Lock = field(default_factory=threading.Lock)
    # httpTrigger
    route: Route | None = None
    methods: frozenset[str] | None = None

    def describe(self) -> str:
        if self.trigger_type == SB_TRIGGER:
            return (
                f"queue {self.entity}"
                if self.subscription is None
                else f"topic {self.entity} / subscription {self.subscription}"
            )
        if self.trigger_type == TIMER_TRIGGER:
            return f"timer {self.schedule.expression if self.schedule else '?'}"
        methods = ",".join(sorted(self.methods)) if self.methods else "ANY"
        return f"{methods} /{self.route.template if self.route else ''}"


@dataclass(frozen=True)
class FunctionInfo:
    """One hosted function, for ``rlq serve``'s start-up table."""

    name: str
    trigger: str
    detail: str


@dataclass(frozen=True)
class Invocation:
    """One function invocation and how it ended (also written as one log line)."""

    function: str
    trigger: str
    outcome: (
        str  # completed | abandoned | dead_lettered | settled_by_handler | lock_lost | ok | error | <status>
    )
    ms: float
    message_id: str | None = None
    delivery_count: int | None = None
    error: str | None = None
    at: float = 0.0


def list_functions(app: func.FunctionApp) -> list[Any]:
    """The app's functions, listable any number of times. ``get_functions()`` records every name it
    has seen and refuses a second listing of the same app as "duplicate names", so the record is
    started and left empty around each listing."""
    app.functions_bindings = None
    try:
        return list(app.get_functions())
    finally:
        app.functions_bindings = None


def load_functions(app: func.FunctionApp, resolve: Callable[[str | None], str]) -> list[HostedFunction]:
    """The app's functions as the host binds them; ``resolve`` expands ``%SETTING%`` expressions.
    A trigger or binding the local host does not host fails here, naming the function."""
    hosted = []
    for fn in list_functions(app):
        trigger = fn.get_trigger()
        name = fn.get_function_name() or fn.get_user_function().__name__
        if trigger is None:
            raise LocalHostError(f"function {name} has no trigger")
        user = fn.get_user_function()
        h = HostedFunction(
            name=name,
            trigger_type=trigger.type,
            arg_name=trigger.name,
            user_function=user,
            wants_context="context" in inspect.signature(user).parameters,
        )
        if trigger.type == SB_TRIGGER:
            if getattr(trigger, "cardinality", None) not in (None, "one", "ONE") and str(
                getattr(trigger, "cardinality", "")
            ).lower().endswith("many"):
                raise LocalHostError(f"function {name}: batch (cardinality=many) triggers are not hosted")
            topic = getattr(trigger, "topic_name", None)
            if topic:
                h.entity = resolve(topic)
                h.subscription = resolve(trigger.subscription_name)
            else:
                h.entity = resolve(trigger.queue_name)
        elif trigger.type == TIMER_TRIGGER:
            h.schedule = Schedule(resolve(trigger.schedule))
            h.run_on_startup = bool(getattr(trigger, "run_on_startup", False))
        elif trigger.type == HTTP_TRIGGER:
            h.route = Route.compile(resolve(getattr(trigger, "route", None) or name))
            methods = getattr(trigger, "methods", None)
            h.methods = frozenset(str(getattr(m, "value", m)).upper() for m in methods) if methods else None
        else:
            raise LocalHostError(
                f"function {name}: trigger type {trigger.type!r} is not hosted locally "
                f"(hosted: {SB_TRIGGER}, {TIMER_TRIGGER}, {HTTP_TRIGGER})"
            )
        for b in fn.get_bindings():
            if b is trigger:
                continue
            if b.type == SB_OUTPUT:
                entity = getattr(b, "queue_name", None) or getattr(b, "topic_name", None)
                h.outputs.append(OutputBinding(b.name, resolve(entity)))
            elif b.type == HTTP_OUTPUT and trigger.type == HTTP_TRIGGER:
                continue
            else:
                raise LocalHostError(
                    f"function {name}: binding {b.name} of type {b.type!r} is not hosted locally"
                )
        hosted.append(h)
    return hosted


def call_function(h: HostedFunction, trigger_value: Any, outs: dict[str, Out]) -> Any:
    """Invoke ``h`` as the Python worker does: arguments by binding name, ``context`` when the
    function asks for it, a coroutine run to completion."""
    kwargs: dict[str, Any] = {h.arg_name: trigger_value}
    kwargs.update({name: out for name, out in outs.items() if name != "$return"})
    if h.wants_context:
        kwargs["context"] = _Context(h.name)
    result = h.user_function(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


# --- runtime objects handed to functions ------------------------------------------------------


class Out(func.Out[Any]):
    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext:
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext:
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class _Context(func.Context):
    _local = threading.local()

    def __init__(self, function_name: str) -> None:
        self._id = str(uuid.uuid4())
        self._name = function_name

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return str(Path(__file__).resolve().parents[2])

    @property
    def trace_context(self) -> Any:
        return _TraceContext()

    @property
    def retry_context(self) -> Any:
        return _RetryContext()


def to_function_message(rm: Any) -> ServiceBusMessage:
    """The runtime's message object, filled from a broker message as the worker fills it."""
    props = dict(rm.application_properties or {})
    enqueued = rm.enqueued_at if isinstance(rm.enqueued_at, datetime) else _dt(rm.enqueued_at)
    scheduled = rm.scheduled_at if isinstance(rm.scheduled_at, datetime) else _dt(rm.scheduled_at)
    locked_until = _dt(rm.locked_until)
    meta = {
        "MessageId": func_meta.Datum(rm.message_id, "string"),
        "DeliveryCount": func_meta.Datum(int(rm.delivery_count), "int"),
        "SequenceNumber": func_meta.Datum(int(rm.sequence_number), "int"),
        "LockToken": func_meta.Datum(str(rm.lock_token), "string"),
        "ContentType": func_meta.Datum(rm.content_type, "string"),
        "CorrelationId": func_meta.Datum(rm.correlation_id, "string"),
        "EnqueuedTimeUtc": func_meta.Datum(enqueued.isoformat() if enqueued else None, "string"),
        "ApplicationProperties": func_meta.Datum(json.dumps(props, default=str), "json"),
    }
    return ServiceBusMessage(
        body=bytes(rm.body),
        trigger_metadata=meta,
        application_properties=props,
        content_type=rm.content_type,
        correlation_id=rm.correlation_id,
        delivery_count=int(rm.delivery_count),
        enqueued_sequence_number=int(rm.sequence_number),
        enqueued_time_utc=enqueued,
        locked_until=locked_until,
        lock_token=str(rm.lock_token),
        message_id=rm.message_id,
        scheduled_enqueue_time_utc=scheduled,
        sequence_number=int(rm.sequence_number),
        to=rm.entity,
        user_properties=props,
    )


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def describe_error(err: BaseException) -> str:
    """One line naming the error, without a traceback."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def json_response(status: int, payload: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(payload), status_code=status, mimetype="application/json")


def as_response(result: Any) -> func.HttpResponse:
    if isinstance(result, func.HttpResponse):
        return result
    if result is None:
        return func.HttpResponse(status_code=204)
    if isinstance(result, (bytes, bytearray)):
        return func.HttpResponse(bytes(result), mimetype="application/octet-stream")
    if isinstance(result, str):
        return func.HttpResponse(result)
    return json_response(200, result)


def content_type(resp: func.HttpResponse) -> str:
    mime = resp.mimetype or "text/plain"
    if resp.charset and (mime.startswith("text/") or mime.endswith(("json", "xml", "javascript"))):
        return f"{mime}; charset={resp.charset}"
    return mime
