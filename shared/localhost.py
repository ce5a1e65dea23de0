"""A local Functions host: runs the same ``function_app.py`` on one machine, on the SQLite broker.

The Azure Functions host owns the parts of a trigger that a handler never sees: peek-lock receive,
complete on success, abandon on an exception, dead-letter at the last delivery, lock renewal while
the handler runs, ``maxConcurrentCalls``, NCRONTAB schedules with a singleton lock, and HTTP
routing. This module does those things against :class:`shared.adapters.sqlite_broker.SqliteBroker`
so the handlers in ``functions/`` run unchanged locally and in tests.

Two ways to drive it:

* background threads for ``rlq serve`` / ``rlq demo``: :meth:`LocalHost.start` / :meth:`LocalHost.stop`
  (or :meth:`LocalHost.run_forever`, which stops on Ctrl-C / SIGTERM);
* deterministic steps for tests, with no sleeps: :meth:`LocalHost.drain` (every deliverable
  message, on the calling thread), :meth:`LocalHost.tick_timers` (every timer due at ``now``),
  :meth:`LocalHost.renew_locks` (one pass of the lock renewer).

What it does not do: enforce function keys (``func start`` does not either; the server listens on
127.0.0.1 only), sessions, batch (``cardinality=many``) triggers, or kill a handler that overruns
``functionTimeout`` (Python cannot stop a thread; the overrun is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions import meta as func_meta
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest
from croniter import croniter

from shared.settings import Settings

if TYPE_CHECKING:  # the broker module is only needed for its type here
    from shared.adapters.sqlite_broker import SqliteBroker

log = logging.getLogger("rlq.localhost")

Clock = Callable[[], float]

SB_TRIGGER = "serviceBusTrigger"
TIMER_TRIGGER = "timerTrigger"
HTTP_TRIGGER = "httpTrigger"
SB_OUTPUT = "serviceBus"
HTTP_OUTPUT = "http"

DEAD_LETTER_REASON = "MaxDeliveryCountExceeded"
MAX_DESCRIPTION_CHARS = 1024
MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024
PAST_DUE_AFTER_S = 1.0  # a timer invocation this late (or later) is reported as past due


class LocalHostError(Exception):
    """The function app cannot be hosted as written (unknown trigger, unresolved %SETTING%)."""


# --- host.json -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostConfig:
    """The host.json settings the local host honours; defaults are the Functions host's own."""

    max_concurrent_calls: int = 16
    max_auto_lock_renewal_s: float = 300.0
    auto_complete_messages: bool = True
    route_prefix: str = "api"
    function_timeout_s: float | None = None

    @classmethod
    def load(cls, path: Path | None) -> HostConfig:
        """Read ``path``; a missing file gives the defaults, a malformed one fails naming the key."""
        if path is None or not Path(path).is_file():
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise LocalHostError(f"{path}: not valid JSON ({err})") from None
        ext = data.get("extensions") or {}
        sb = ext.get("serviceBus") or {}
        handler_opts = sb.get("messageHandlerOptions") or {}  # extension 3.x/4.x spelling
        http = ext.get("http") or {}
        defaults = cls()
        try:
            calls = int(
                sb.get(
                    "maxConcurrentCalls",
                    handler_opts.get("maxConcurrentCalls", defaults.max_concurrent_calls),
                )
            )
            renewal = sb.get("maxAutoLockRenewalDuration", handler_opts.get("maxAutoRenewDuration"))
            auto_complete = sb.get("autoCompleteMessages", handler_opts.get("autoComplete", True))
            timeout = data.get("functionTimeout")
            return cls(
                max_concurrent_calls=max(1, calls),
                max_auto_lock_renewal_s=(
                    parse_timespan(renewal) if renewal is not None else defaults.max_auto_lock_renewal_s
                ),
                auto_complete_messages=bool(auto_complete),
                route_prefix=str(http.get("routePrefix", defaults.route_prefix)).strip("/"),
                function_timeout_s=parse_timespan(timeout) if timeout not in (None, "-1") else None,
            )
        except (TypeError, ValueError) as err:
            raise LocalHostError(f"{path}: {err}") from None


_TIMESPAN_RE = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


def parse_timespan(text: str) -> float:
    """A .NET TimeSpan (``[d.]hh:mm:ss[.fff]``, as host.json writes durations) in seconds."""
    m = _TIMESPAN_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration; expected [d.]hh:mm:ss, e.g. 00:05:00")
    return int(m["d"] or 0) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])


def default_host_json() -> Path | None:
    """host.json at the repository root (beside function_app.py), when there is one."""
    candidate = Path(__file__).resolve().parents[1] / "host.json"
    return candidate if candidate.is_file() else None


# --- app settings ----------------------------------------------------------------------------

_SETTING_RE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


def resolve_app_settings(text: str, settings: Settings) -> str:
    """Replace ``%NAME%`` binding expressions as the host does: from the environment first, then
    from :class:`Settings` (``%RLQ_POLL_SCHEDULE%`` → ``settings.poll_schedule``)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in os.environ:
            return os.environ[name]
        field_name = name.lower()
        field_name = field_name.removeprefix("rlq_")
        if field_name in type(settings).model_fields:
            value = getattr(settings, field_name)
            if value is not None and not hasattr(value, "get_secret_value"):
                return str(value)
        raise LocalHostError(
            f"app setting {name} (binding expression %{name}%) is not set: set the environment "
            f"variable {name}" + (f" or Settings.{field_name}" if name.upper().startswith("RLQ_") else "")
        )

    return _SETTING_RE.sub(one, text)


# --- schedules -------------------------------------------------------------------------------


class Schedule:
    """An NCRONTAB expression (6 fields, seconds first; 5 fields accepted) or a TimeSpan interval."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        self._interval_s: float | None = None
        if _TIMESPAN_RE.match(self.expression):
            self._interval_s = parse_timespan(self.expression)
            if self._interval_s <= 0:
                raise LocalHostError(f"timer schedule {expression!r}: the interval must be positive")
            return
        fields = self.expression.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(
            self.expression, second_at_beginning=len(fields) == 6
        ):
            raise LocalHostError(
                f"timer schedule {expression!r} is not an NCRONTAB expression "
                "({second} {minute} {hour} {day} {month} {day-of-week}, e.g. '*/10 * * * * *')"
            )
        self._six = len(fields) == 6

    def next_after(self, t: float) -> float:
        """The first occurrence strictly after epoch second ``t``."""
        if self._interval_s is not None:
            return t + self._interval_s
        return float(croniter(self.expression, t, second_at_beginning=self._six).get_next(float))

    def __repr__(self) -> str:
        return f"Schedule({self.expression!r})"


# --- HTTP routes -----------------------------------------------------------------------------

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
}
_PARAM_RE = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+)(?:\([^)]*\))?)?(\?)?\}")


@dataclass(frozen=True)
class Route:
    """A compiled route template (``trainings/{request_id}/cancel``)."""

    template: str
    pattern: re.Pattern[str]
    params: tuple[str, ...]
    literal_segments: int
    catch_all: bool

    @classmethod
    def compile(cls, template: str) -> Route:
        template = template.strip("/")
        names: list[str] = []
        parts: list[str] = []
        literals = 0
        catch_all = False
        for i, segment in enumerate(template.split("/") if template else []):
            sep = "/" if i else ""
            whole = _PARAM_RE.fullmatch(segment)
            if whole and whole.group(4):  # an optional segment: {name?}
                names.append(whole.group(2))
                parts.append(f"(?:{sep}(?P<p{len(names) - 1}>{_param_regex(whole)}))?")
                continue
            if whole and whole.group(1):  # catch-all: {*rest}
                names.append(whole.group(2))
                catch_all = True
                parts.append(f"(?:{sep}(?P<p{len(names) - 1}>.*))?")
                continue
            out, pos, has_param = [], 0, False
            for m in _PARAM_RE.finditer(segment):
                out.append(re.escape(segment[pos : m.start()]))
                names.append(m.group(2))
                out.append(f"(?P<p{len(names) - 1}>{_param_regex(m)})")
                pos, has_param = m.end(), True
            out.append(re.escape(segment[pos:]))
            literals += 0 if has_param else 1
            parts.append(sep + "".join(out))
        pattern = re.compile("^" + "".join(parts) + "$", re.IGNORECASE)
        return cls(template, pattern, tuple(names), literals, catch_all)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.pattern.match(path.strip("/"))
        if m is None:
            return None
        return {
            name: unquote(m.group(f"p{i}"))
            for i, name in enumerate(self.params)
            if m.group(f"p{i}") is not None
        }

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Literal segments beat parameters; catch-alls go last (as ASP.NET routing orders them)."""
        return (int(self.catch_all), -self.literal_segments, len(self.params))


def _param_regex(m: re.Match[str]) -> str:
    return _CONSTRAINTS.get(m.group(3) or "", r"[^/]+")


# --- the function table ----------------------------------------------------------------------


@dataclass
class _Output:
    """A Service Bus output binding: what the handler sets is sent after it returns."""

    name: str
    entity: str


@dataclass
class _Hosted:
    name: str
    trigger_type: str
    arg_name: str
    user_function: Callable[..., Any]
    outputs: list[_Output] = field(default_factory=list)
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


@dataclass
class _InFlight:
    message: Any  # ReceivedMessage
    locked_until: float
    renew_until: float


# --- the host --------------------------------------------------------------------------------


class LocalHost:
    """Hosts a ``func.FunctionApp`` on the SQLite broker, a timer loop and a loopback HTTP server."""

    def __init__(
        self,
        app: func.FunctionApp,
        *,
        broker: SqliteBroker,
        settings: Settings,
        host_json: Path | None = None,
        http_port: int = 7071,
        clock: Clock = time.time,
        idle_poll_s: float = 0.5,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._clock = clock
        self._idle_poll_s = idle_poll_s
        self.config = HostConfig.load(host_json if host_json is not None else default_host_json())
        self._requested_port = http_port
        self._functions = self._load(app)
        self._sb = [f for f in self._functions if f.trigger_type == SB_TRIGGER]
        self._timers = [f for f in self._functions if f.trigger_type == TIMER_TRIGGER]
        self._http = sorted(
            (f for f in self._functions if f.trigger_type == HTTP_TRIGGER),
            key=lambda f: f.route.sort_key if f.route else (9, 0, 0),
        )
        start = clock()
        for t in self._timers:
            assert t.schedule is not None
            t.next_due = start if t.run_on_startup else t.schedule.next_after(start)

        self._invocations: deque[Invocation] = deque(maxlen=1000)
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._closing = threading.Event()
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[Any]] = set()
        self._futures_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._started = False

    # --- loading ---------------------------------------------------------------------------

    def _load(self, app: func.FunctionApp) -> list[_Hosted]:
        # get_functions() records every name it has seen and rejects a second listing of the same
        # app as "duplicate names"; the app may already have been listed (by a test, by the lead's
        # checks), so start its record afresh.
        if getattr(app, "functions_bindings", None):
            app.functions_bindings = None
        hosted = []
        for fn in app.get_functions():
            trigger = fn.get_trigger()
            name = fn.get_function_name() or fn.get_user_function().__name__
            if trigger is None:
                raise LocalHostError(f"function {name} has no trigger")
            user = fn.get_user_function()
            h = _Hosted(
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
                    h.entity = self._resolve(topic)
                    h.subscription = self._resolve(trigger.subscription_name)
                else:
                    h.entity = self._resolve(trigger.queue_name)
            elif trigger.type == TIMER_TRIGGER:
                h.schedule = Schedule(self._resolve(trigger.schedule))
                h.run_on_startup = bool(getattr(trigger, "run_on_startup", False))
            elif trigger.type == HTTP_TRIGGER:
                h.route = Route.compile(self._resolve(getattr(trigger, "route", None) or name))
                methods = getattr(trigger, "methods", None)
                h.methods = (
                    frozenset(str(getattr(m, "value", m)).upper() for m in methods) if methods else None
                )
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
                    h.outputs.append(_Output(b.name, self._resolve(entity)))
                elif b.type == HTTP_OUTPUT and trigger.type == HTTP_TRIGGER:
                    continue
                else:
                    raise LocalHostError(
                        f"function {name}: binding {b.name} of type {b.type!r} is not hosted locally"
                    )
            hosted.append(h)
        return hosted

    def _resolve(self, text: str | None) -> str:
        if not text:
            raise LocalHostError("a binding is missing its queue, topic, subscription or schedule")
        return resolve_app_settings(str(text), self._settings)

    @property
    def functions(self) -> list[FunctionInfo]:
        return [FunctionInfo(f.name, f.trigger_type, f.describe()) for f in self._functions]

    @property
    def invocations(self) -> list[Invocation]:
        """The most recent invocations (up to 1000), oldest first."""
        return list(self._invocations)

    def next_due(self, name: str) -> datetime:
        """When timer function ``name`` fires next."""
        for t in self._timers:
            if t.name == name:
                return datetime.fromtimestamp(t.next_due, UTC)
        raise KeyError(f"no timer function named {name!r}")

    # --- deterministic drive ---------------------------------------------------------------

    def drain(self, max_messages: int | None = None) -> int:
        """Process every message deliverable now on every Service Bus trigger, on this thread.

        Triggers take turns one message at a time. An abandoned message is deliverable again at
        once (as on Service Bus), so a message that keeps failing is retried in the same drain
        until the broker's max delivery count dead-letters it. Returns the invocations made.
        """
        done = 0
        progressed = True
        while progressed:
            progressed = False
            for h in self._sb:
                if max_messages is not None and done >= max_messages:
                    return done
                assert h.entity is not None
                msgs = self._broker.receive(h.entity, subscription=h.subscription, max_messages=1)
                if msgs:
                    self._process_message(h, msgs[0])
                    done += 1
                    progressed = True
        return done

    def tick_timers(self, now: float | datetime | None = None) -> list[str]:
        """Run, on this thread, every timer function due at ``now`` (default: the clock).

        A timer still running elsewhere is skipped and stays due (the host's singleton lock), so
        it fires late, marked past due, on a later tick. Returns the names that ran.
        """
        at = self._epoch(now)
        ran = []
        for t in self._timers:
            if at < t.next_due or not t.running.acquire(blocking=False):
                continue
            due = t.next_due
            try:
                assert t.schedule is not None
                t.next_due = t.schedule.next_after(at)
                self._run_timer(t, due=due, now=at)
            finally:
                t.running.release()
            ran.append(t.name)
        return ran

    def renew_locks(self, now: float | datetime | None = None) -> int:
        """Renew the lock of every in-flight message whose lock is within half its duration of
        expiring, until ``maxAutoLockRenewalDuration`` after it was received. Returns renewals."""
        at = self._epoch(now)
        lock_s = float(getattr(self._broker, "lock_duration_s", self._settings.lock_duration_s))
        with self._inflight_lock:
            due = [
                (token, f)
                for token, f in self._inflight.items()
                if at < f.renew_until and f.locked_until - at <= lock_s / 2
            ]
        renewed = 0
        for token, f in due:
            try:
                until = self._broker.renew_lock(f.message)
            except Exception as err:  # noqa: BLE001 - lock lost or the broker busy: the settle call will tell
                log.warning("lock renewal failed for message %s: %s", f.message.message_id, _describe(err))
                continue
            with self._inflight_lock:
                if token in self._inflight:
                    self._inflight[token].locked_until = float(until)
            renewed += 1
        return renewed

    # --- background drive ------------------------------------------------------------------

    def start(self, *, queues: bool = True, timers: bool = True, http: bool = True) -> LocalHost:
        """Start receivers (``maxConcurrentCalls`` per Service Bus function), the timer loop and
        the HTTP server on background threads; returns at once."""
        if self._started:
            raise RuntimeError("the host is already started")
        self._started = True
        self._stopping.clear()
        workers = (self.config.max_concurrent_calls * len(self._sb) if queues else 0) + len(self._timers) + 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlq-fn")
        if http and self._http:
            self._start_http()
        if queues:
            for h in self._sb:
                self._spawn(f"rlq-recv-{h.name}", self._receive_loop, h)
        if timers and self._timers:
            self._spawn("rlq-timers", self._timer_loop)
        log.info(
            "host started: %d function(s)%s",
            len(self._functions),
            f"; http on {self.base_url}/{self.config.route_prefix}" if self._server else "",
        )
        return self

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Stop receiving, let in-flight invocations finish (they complete or abandon as usual),
        then stop the HTTP server and the lock renewer. Whatever is still running after
        ``timeout_s`` is named in the log: its lock expires and the broker redelivers it."""
        self._stopping.set()
        self._stop_requested.set()
        for t in self._threads:
            t.join(timeout=timeout_s)
        self._threads.clear()
        if self._pool is not None:
            with self._futures_lock:
                pending = set(self._futures)
            _, not_done = wait_futures(pending, timeout=timeout_s)
            if not_done:
                log.warning(
                    "%d invocation(s) still running after %.0f s; their messages will be "
                    "redelivered when their locks expire",
                    len(not_done),
                    timeout_s,
                )
            self._pool.shutdown(wait=not not_done, cancel_futures=True)
            self._pool = None
        if self._server is not None:
            self._server.shutdown()  # returns once serve_forever has
            self._server.server_close()
            self._server = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=timeout_s)
            self._http_thread = None
        self._closing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        self._closing.clear()
        if self._started:
            log.info("host stopped")
        self._started = False

    close = stop

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to stop (safe from a signal handler or another thread)."""
        self._stop_requested.set()

    def run_forever(self) -> None:
        """Start, then block until Ctrl-C, SIGTERM or :meth:`request_stop`; stop gracefully."""
        self._stop_requested.clear()
        restore: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore[sig] = signal.signal(sig, lambda *_: self._stop_requested.set())
        try:
            self.start()
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            for sig, previous in restore.items():
                signal.signal(sig, previous)
            self.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        """True from the moment :meth:`stop` begins: no new message is received after it."""
        return self._stopping.is_set()

    @property
    def http_port(self) -> int:
        """The port the HTTP server listens on (the real one when started with port 0)."""
        return self._server.server_address[1] if self._server is not None else self._requested_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # --- Service Bus -----------------------------------------------------------------------

    def _receive_loop(self, h: _Hosted) -> None:
        slots = threading.BoundedSemaphore(self.config.max_concurrent_calls)
        idle = 0.02
        while not self._stopping.is_set():
            if not slots.acquire(timeout=0.2):
                continue
            if self._stopping.is_set():  # stop() began while this receiver waited for a slot
                slots.release()
                break
            try:
                assert h.entity is not None
                msgs = self._broker.receive(h.entity, subscription=h.subscription, max_messages=1)
            except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
                slots.release()
                log.warning("receive from %s failed: %s", h.describe(), _describe(err))
                self._stopping.wait(min(self._idle_poll_s, 1.0))
                continue
            if not msgs:
                slots.release()
                self._stopping.wait(idle)
                idle = min(idle * 2, self._idle_poll_s)
                continue
            idle = 0.02
            self._submit(self._process_message, h, msgs[0], release=slots.release)

    def _submit(self, fn: Callable[..., Any], *args: Any, release: Callable[[], None] | None = None) -> None:
        assert self._pool is not None

        def run() -> None:
            try:
                fn(*args)
            finally:
                if release is not None:
                    release()

        fut = self._pool.submit(run)
        with self._futures_lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)

    def _forget(self, fut: Future[Any]) -> None:
        with self._futures_lock:
            self._futures.discard(fut)

    def _process_message(self, h: _Hosted, rm: Any) -> Invocation:
        """Invoke ``h`` with one received message and settle it as the Functions host does."""
        t0 = time.perf_counter()
        error: str | None = None
        token = str(rm.lock_token)
        with self._inflight_lock:
            self._inflight[token] = _InFlight(
                rm, float(rm.locked_until), self._clock() + self.config.max_auto_lock_renewal_s
            )
        self._ensure_renewer()
        try:
            outs = {o.name: _Out() for o in h.outputs}
            result = self._call(h, _to_function_message(rm), outs)
            if "$return" in outs and result is not None:
                outs["$return"].set(result)
            for o in h.outputs:
                self._send_output(o, outs[o.name].get(), rm)
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            error = _describe(err)
            outcome = self._settle_failure(h, rm, err)
        else:
            outcome = self._settle_success(rm)
        finally:
            with self._inflight_lock:
                self._inflight.pop(token, None)
        return self._record(
            h, outcome, t0, message_id=rm.message_id, delivery_count=rm.delivery_count, error=error
        )

    def _settle_success(self, rm: Any) -> str:
        if not self.config.auto_complete_messages:
            return "ok"
        try:
            return "completed" if self._broker.complete(rm) else "settled_by_handler"
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            log.warning(
                "complete failed for message %s (%s); it will be redelivered", rm.message_id, _describe(err)
            )
            return "lock_lost"

    def _settle_failure(self, h: _Hosted, rm: Any, err: Exception) -> str:
        if not self.config.auto_complete_messages:
            return "error"
        max_count = int(getattr(self._broker, "max_delivery_count", self._settings.max_delivery_count))
        try:
            if int(rm.delivery_count) >= max_count:
                # The broker would dead-letter it on the next receive with a generic reason; doing
                # it now keeps the last error as the description a person reads.
                settled = self._broker.dead_letter(
                    rm, reason=DEAD_LETTER_REASON, description=_describe(err)[:MAX_DESCRIPTION_CHARS]
                )
                return "dead_lettered" if settled is not False else "settled_by_handler"
            settled = self._broker.abandon(rm)
            return "abandoned" if settled is not False else "settled_by_handler"
        except Exception as settle_err:  # noqa: BLE001 - a handler or broker fault never stops the host
            log.warning(
                "settling message %s after an error failed (%s); it will be redelivered",
                rm.message_id,
                _describe(settle_err),
            )
            return "lock_lost"

    def _send_output(self, o: _Output, value: Any, rm: Any) -> None:
        if value is None:
            return
        for item in value if isinstance(value, list) else [value]:
            body = (
                item
                if isinstance(item, bytes)
                else (item.encode("utf-8") if isinstance(item, str) else json.dumps(item).encode("utf-8"))
            )
            self._broker.send(o.entity, body, correlation_id=rm.message_id)

    def _ensure_renewer(self) -> None:
        with self._inflight_lock:
            if self._renewer is not None and self._renewer.is_alive():
                return
            self._renewer = threading.Thread(target=self._renew_loop, name="rlq-lock-renewer", daemon=True)
            self._renewer.start()

    def _renew_loop(self) -> None:
        lock_s = float(getattr(self._broker, "lock_duration_s", self._settings.lock_duration_s))
        interval = min(max(lock_s / 6, 0.05), 5.0)
        while not self._closing.wait(interval):
            with self._inflight_lock:
                if not self._inflight:
                    self._renewer = None
                    return
            try:
                self.renew_locks()
            except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
                log.warning("lock renewer: %s", _describe(err))

    # --- timers ----------------------------------------------------------------------------

    def _timer_loop(self) -> None:
        while not self._stopping.is_set():
            now = self._clock()
            for t in self._timers:
                if now >= t.next_due and t.running.acquire(blocking=False):
                    due = t.next_due
                    assert t.schedule is not None
                    t.next_due = t.schedule.next_after(now)
                    self._submit(self._run_timer, t, due, now, release=t.running.release)
            wait = min((t.next_due for t in self._timers), default=now + 1.0) - self._clock()
            self._stopping.wait(min(max(wait, 0.01), 1.0))

    def _run_timer(self, t: _Hosted, due: float, now: float) -> Invocation:
        t0 = time.perf_counter()
        request = TimerRequest(
            past_due=now - due >= PAST_DUE_AFTER_S,
            schedule_status={"Last": _iso(due), "Next": _iso(t.next_due), "LastUpdated": _iso(now)},
            schedule={"AdjustForDST": True},
        )
        try:
            self._call(t, request, {})
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            return self._record(t, "error", t0, error=_describe(err))
        return self._record(t, "ok", t0)

    # --- HTTP ------------------------------------------------------------------------------

    def _start_http(self) -> None:
        host = self

        class Handler(_RequestHandler):
            localhost = host

        self._server = ThreadingHTTPServer(("127.0.0.1", self._requested_port), Handler)
        self._server.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._server.serve_forever, args=(0.2,), name="rlq-http", daemon=True
        )
        self._http_thread.start()

    def handle_http(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> func.HttpResponse:
        """Route one request to its function (also usable without a socket, e.g. in tests)."""
        parts = urlsplit(url)
        path = parts.path  # matched still encoded: an encoded '/' inside a parameter stays inside it
        prefix = "/" + self.config.route_prefix if self.config.route_prefix else ""
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return _json_response(404, {"error": f"no function at {path}"})
        sub = path[len(prefix) :]
        allowed: set[str] = set()
        for h in self._http:
            assert h.route is not None
            params = h.route.match(sub)
            if params is None:
                continue
            if h.methods is not None and method.upper() not in h.methods:
                allowed |= h.methods
                continue
            return self._invoke_http(h, method, url, headers, body, params, dict(parse_qsl(parts.query)))
        if allowed:
            resp = _json_response(
                405, {"error": f"method {method} not allowed; allowed: {', '.join(sorted(allowed))}"}
            )
            resp.headers["Allow"] = ", ".join(sorted(allowed))
            return resp
        return _json_response(404, {"error": f"no function at {path}"})

    def _invoke_http(
        self,
        h: _Hosted,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        route_params: dict[str, str],
        query: dict[str, str],
    ) -> func.HttpResponse:
        t0 = time.perf_counter()
        req = func.HttpRequest(
            method=method.upper(),
            url=url,
            headers=dict(headers),
            params=query,
            route_params=route_params,
            body=body,
        )
        try:
            resp = _as_response(self._call(h, req, {}))
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            self._record(
                h, "error", t0, message_id=f"{method.upper()} {urlsplit(url).path}", error=_describe(err)
            )
            return _json_response(500, {"error": "the function failed; see the host log"})
        self._record(h, str(resp.status_code), t0, message_id=f"{method.upper()} {urlsplit(url).path}")
        return resp

    # --- shared plumbing -------------------------------------------------------------------

    def _call(self, h: _Hosted, trigger_value: Any, outs: dict[str, _Out]) -> Any:
        kwargs: dict[str, Any] = {h.arg_name: trigger_value}
        kwargs.update({name: out for name, out in outs.items() if name != "$return"})
        if h.wants_context:
            kwargs["context"] = _Context(h.name)
        result = h.user_function(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return result

    def _record(
        self,
        h: _Hosted,
        outcome: str,
        t0: float,
        *,
        message_id: str | None = None,
        delivery_count: int | None = None,
        error: str | None = None,
    ) -> Invocation:
        ms = (time.perf_counter() - t0) * 1000.0
        inv = Invocation(
            h.name, h.trigger_type, outcome, round(ms, 1), message_id, delivery_count, error, self._clock()
        )
        self._invocations.append(inv)
        if self.config.function_timeout_s is not None and ms / 1000.0 > self.config.function_timeout_s:
            log.warning(
                "function %s ran %.0f s, past functionTimeout (%.0f s)",
                h.name,
                ms / 1000.0,
                self.config.function_timeout_s,
            )
        line = f"fn={h.name} outcome={outcome} ms={inv.ms:.1f}"
        if message_id is not None:
            line += f" id={message_id}"
        if delivery_count is not None:
            line += f" delivery={delivery_count}"
        if error is not None:
            line += f" error={error}"
        (log.warning if error else log.info)(line)
        return inv

    def _spawn(self, name: str, target: Callable[..., Any], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _epoch(self, now: float | datetime | None) -> float:
        if now is None:
            return self._clock()
        return now.timestamp() if isinstance(now, datetime) else float(now)


# --- runtime objects handed to functions ------------------------------------------------------


class _Out(func.Out[Any]):
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
        return str(Path(__file__).resolve().parents[1])

    @property
    def trace_context(self) -> Any:
        return _TraceContext()

    @property
    def retry_context(self) -> Any:
        return _RetryContext()


def _to_function_message(rm: Any) -> ServiceBusMessage:
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


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _describe(err: BaseException) -> str:
    """One line naming the error, without a traceback."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _json_response(status: int, payload: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(payload), status_code=status, mimetype="application/json")


def _as_response(result: Any) -> func.HttpResponse:
    if isinstance(result, func.HttpResponse):
        return result
    if result is None:
        return func.HttpResponse(status_code=204)
    if isinstance(result, (bytes, bytearray)):
        return func.HttpResponse(bytes(result), mimetype="application/octet-stream")
    if isinstance(result, str):
        return func.HttpResponse(result)
    return _json_response(200, result)


def _content_type(resp: func.HttpResponse) -> str:
    mime = resp.mimetype or "text/plain"
    if resp.charset and (mime.startswith("text/") or mime.endswith(("json", "xml", "javascript"))):
        return f"{mime}; charset={resp.charset}"
    return mime


class _RequestHandler(BaseHTTPRequestHandler):
    """Translates one socket request into :meth:`LocalHost.handle_http` and back."""

    localhost: LocalHost
    protocol_version = "HTTP/1.1"
    server_version = "rlq-localhost"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_HTTP_BODY_BYTES:
            resp = _json_response(413, {"error": f"body larger than {MAX_HTTP_BODY_BYTES} bytes"})
            self.close_connection = True
        else:
            body = self.rfile.read(length) if length else b""
            url = f"http://{self.headers.get('Host') or self.localhost.base_url[7:]}{self.path}"
            headers: dict[str, str] = {}
            for k, v in self.headers.items():
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            resp = self.localhost.handle_http(self.command, url, headers, body)
        payload = resp.get_body() if self.command != "HEAD" else b""
        self.send_response(resp.status_code)
        seen = set()
        for k, v in resp.headers.items():
            seen.add(k.lower())
            self.send_header(k, v)
        if "content-type" not in seen:
            self.send_header("Content-Type", _content_type(resp))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


@contextlib.contextmanager
def running(host: LocalHost, **start_kwargs: bool) -> Iterator[LocalHost]:
    """``with running(host): ...`` — started on entry, stopped gracefully on exit."""
    host.start(**start_kwargs)
    try:
        yield host
    finally:
        host.stop()
