"""The local Functions host: runs a ``func.FunctionApp`` on the SQLite broker, a timer loop and HTTP.

The Azure Functions host owns the parts of a trigger that a handler never sees: peek-lock receive,
complete on success, abandon on an exception, dead-letter at the last delivery, lock renewal while
the handler runs, ``maxConcurrentCalls``, NCRONTAB schedules with a singleton lock, and HTTP
routing. :class:`LocalHost` does those things against
:class:`shared.adapters.sqlite_broker.SqliteBroker` so the handlers in ``functions/`` run unchanged
locally and in tests.

HTTP is served by waitress (a bounded thread pool, a listen backlog, an idle timeout, and 400s for
a malformed request line, headers, ``Content-Length`` or chunked body); the routes stay the
function app's: every request goes through :meth:`LocalHost.handle_http` and the app's route table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest

from shared.errors import PermanentError
from shared.localhost.bindings import (
    HTTP_TRIGGER,
    SB_TRIGGER,
    TIMER_TRIGGER,
    FunctionInfo,
    HostedFunction,
    Invocation,
    Out,
    OutputBinding,
    as_response,
    call_function,
    content_type,
    describe_error,
    json_response,
    load_functions,
    to_function_message,
)
from shared.localhost.config import HostConfig, LocalHostError, default_host_json, resolve_app_settings
from shared.settings import Settings

if TYPE_CHECKING:  # the broker and the wiring are only needed for their types here
    from shared.adapters.sqlite_broker import SqliteBroker
    from shared.composition import Wiring

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DEAD_LETTER_REASON = "MaxDeliveryCountExceeded"
MAX_DESCRIPTION_CHARS = 1024
MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024
PAST_DUE_AFTER_S = 1.0  # a timer invocation this late (or later) is reported as past due


@dataclass
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
        http_threads: int = 8,
        http_backlog: int = 1024,
        http_idle_timeout_s: int = 30,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._clock = clock
        self._idle_poll_s = idle_poll_s
        self.config = HostConfig.load(host_json if host_json is not None else default_host_json())
        self._requested_port = http_port
        self._http_threads = http_threads
        self._http_backlog = http_backlog
        self._http_idle_timeout_s = http_idle_timeout_s
        self._functions = load_functions(app, self._resolve)
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
        self._server: Any = None  # waitress.server.TcpWSGIServer while HTTP is served
        self._http_thread: threading.Thread | None = None
        self._started = False
        self._installed: Wiring | None = None

    @classmethod
    def for_wiring(
        cls, w: Wiring, *, app: func.FunctionApp | None = None, http_port: int = 0, **options: Any
    ) -> LocalHost:
        """The repository's function app (or ``app``) hosted on ``w``'s SQLite broker and settings,
        with ``w`` installed as the process-wide wiring the handlers call (undone by
        :meth:`stop`). ``options`` are the constructor's (``clock``, ``host_json``, ...)."""
        from shared import composition

        if w.broker is None:
            raise PermanentError(
                "the local host runs on the SQLite broker (RLQ_BROKER=sqlite); with Service Bus "
                "run the app with Azure Functions Core Tools (func start)",
                reason="Unsupported",
            )
        host = cls(
            app if app is not None else load_function_app(),
            broker=w.broker,
            settings=w.settings,
            http_port=http_port,
            **options,
        )
        composition.install(w)
        host._installed = w
        return host

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
                log.warning(
                    "lock renewal failed for message %s: %s", f.message.message_id, describe_error(err)
                )
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
        self._stop_http(timeout_s)
        self._closing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        self._closing.clear()
        if self._started:
            log.info("host stopped")
        self._started = False

    def close(self) -> None:
        """:meth:`stop`, then forget the wiring :meth:`for_wiring` installed."""
        self.stop()
        if self._installed is not None:
            from shared import composition

            composition.install(None)
            self._installed = None

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
            for signum, previous in restore.items():
                signal.signal(signum, previous)
            self.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stopping(self) -> bool:
        """True from the moment :meth:`stop` begins: no new message is received after it."""
        return self._stopping.is_set()

    @property
    def http_port(self) -> int:
        """The port the HTTP server listens on (the real one when started with port 0)."""
        return int(self._server.effective_port) if self._server is not None else self._requested_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # --- Service Bus -----------------------------------------------------------------------

    def _receive_loop(self, h: HostedFunction) -> None:
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
                log.warning("receive from %s failed: %s", h.describe(), describe_error(err))
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

    def _process_message(self, h: HostedFunction, rm: Any) -> Invocation:
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
            outs = {o.name: Out() for o in h.outputs}
            result = call_function(h, to_function_message(rm), outs)
            if "$return" in outs and result is not None:
                outs["$return"].set(result)
            for o in h.outputs:
                self._send_output(o, outs[o.name].get(), rm)
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            error = describe_error(err)
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
                "complete failed for message %s (%s); it will be redelivered",
                rm.message_id,
                describe_error(err),
            )
            return "lock_lost"

    def _settle_failure(self, h: HostedFunction, rm: Any, err: Exception) -> str:
        if not self.config.auto_complete_messages:
            return "error"
        max_count = int(getattr(self._broker, "max_delivery_count", self._settings.max_delivery_count))
        try:
            if int(rm.delivery_count) >= max_count:
                # The broker would dead-letter it on the next receive with a generic reason; doing
                # it now keeps the last error as the description a person reads.
                settled = self._broker.dead_letter(
                    rm, reason=DEAD_LETTER_REASON, description=describe_error(err)[:MAX_DESCRIPTION_CHARS]
                )
                return "dead_lettered" if settled is not False else "settled_by_handler"
            settled = self._broker.abandon(rm)
            return "abandoned" if settled is not False else "settled_by_handler"
        except Exception as settle_err:  # noqa: BLE001 - a handler or broker fault never stops the host
            log.warning(
                "settling message %s after an error failed (%s); it will be redelivered",
                rm.message_id,
                describe_error(settle_err),
            )
            return "lock_lost"

    def _send_output(self, o: OutputBinding, value: Any, rm: Any) -> None:
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
                log.warning("lock renewer: %s", describe_error(err))

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

    def _run_timer(self, t: HostedFunction, due: float, now: float) -> Invocation:
        t0 = time.perf_counter()
        request = TimerRequest(
            past_due=now - due >= PAST_DUE_AFTER_S,
            schedule_status={"Last": _iso(due), "Next": _iso(t.next_due), "LastUpdated": _iso(now)},
            schedule={"AdjustForDST": True},
        )
        try:
            call_function(t, request, {})
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            return self._record(t, "error", t0, error=describe_error(err))
        return self._record(t, "ok", t0)

    # --- HTTP ------------------------------------------------------------------------------

    def _start_http(self) -> None:
        from waitress.server import create_server  # the local host's own dependency, not the app's

        self._server = create_server(
            self.wsgi,
            host="127.0.0.1",
            port=self._requested_port,
            threads=self._http_threads,
            backlog=self._http_backlog,
            connection_limit=max(100, 4 * self._http_backlog),
            channel_timeout=self._http_idle_timeout_s,
            cleanup_interval=max(1, min(30, self._http_idle_timeout_s // 2)),
            max_request_body_size=MAX_HTTP_BODY_BYTES,
            # poll(), not select(): select() cannot watch a descriptor numbered FD_SETSIZE (1024) or
            # more, and its loop dies on the first such socket; a busy host gets there.
            asyncore_use_poll=True,
            ident="rlq-localhost",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=False,
        )
        self._http_thread = threading.Thread(target=self._server.run, name="rlq-http", daemon=True)
        self._http_thread.start()

    def _stop_http(self, timeout_s: float) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # The request threads first: a thread finishing a request wakes the loop through the
        # trigger's pipe, which must still be open (a closed descriptor may by then be another file).
        server.task_dispatcher.shutdown(timeout=min(timeout_s, 5.0))
        sockets = server._map  # every channel, the listener and the trigger, on the server's loop

        def close_all() -> None:  # runs on the server's loop thread: closing empties the map, ending run()
            for dispatcher in list(sockets.values()):
                with contextlib.suppress(OSError):
                    dispatcher.close()

        try:
            server.trigger.pull_trigger(close_all)
        except OSError as err:
            # The loop cannot be woken (its wake-up pipe is gone): close from here; the loop's
            # next poll (at most 1 s away) finds nothing left to watch and run() returns.
            log.warning("HTTP server's wake-up pipe failed (%s); closing its sockets from this thread", err)
            close_all()
        if self._http_thread is not None:
            self._http_thread.join(timeout=timeout_s)
            self._http_thread = None

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The WSGI face of :meth:`handle_http` (what the HTTP server calls)."""
        method = environ["REQUEST_METHOD"]
        # REQUEST_URI is the path as sent: matched still encoded, as handle_http expects
        raw = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        if "?" not in raw and environ.get("QUERY_STRING"):
            raw += "?" + environ["QUERY_STRING"]
        url = f"http://{environ.get('HTTP_HOST') or self.base_url[7:]}{raw}"
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").title()] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                headers[key.replace("_", "-").title()] = value
        length = int(environ.get("CONTENT_LENGTH") or 0)  # the server has checked it (400 if not)
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        resp = self.handle_http(method, url, headers, body)
        payload = resp.get_body() if method != "HEAD" else b""
        out: list[tuple[str, str]] = []
        seen = set()
        for k, v in resp.headers.items():
            if k.lower() in ("content-length", "connection", "transfer-encoding"):
                continue  # the server frames the response itself
            seen.add(k.lower())
            out.append((k, v))
        if "content-type" not in seen:
            out.append(("Content-Type", content_type(resp)))
        out.append(("Content-Length", str(len(payload))))
        start_response(f"{resp.status_code} {_reason(resp.status_code)}", out)
        return [payload]

    def handle_http(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> func.HttpResponse:
        """Route one request to its function (also usable without a socket, e.g. in tests)."""
        parts = urlsplit(url)
        path = parts.path  # matched still encoded: an encoded '/' inside a parameter stays inside it
        prefix = "/" + self.config.route_prefix if self.config.route_prefix else ""
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return json_response(404, {"error": f"no function at {path}"})
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
            resp = json_response(
                405, {"error": f"method {method} not allowed; allowed: {', '.join(sorted(allowed))}"}
            )
            resp.headers["Allow"] = ", ".join(sorted(allowed))
            return resp
        return json_response(404, {"error": f"no function at {path}"})

    def _invoke_http(
        self,
        h: HostedFunction,
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
            resp = as_response(call_function(h, req, {}))
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            self._record(
                h, "error", t0, message_id=f"{method.upper()} {urlsplit(url).path}", error=describe_error(err)
            )
            return json_response(500, {"error": "the function failed; see the host log"})
        self._record(h, str(resp.status_code), t0, message_id=f"{method.upper()} {urlsplit(url).path}")
        return resp

    # --- shared plumbing -------------------------------------------------------------------

    def _record(
        self,
        h: HostedFunction,
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


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def load_function_app() -> func.FunctionApp:
    """``function_app.app``: importable from the repository root whatever the working directory."""
    try:
        import function_app
    except ModuleNotFoundError as err:
        if err.name != "function_app":
            raise
        root = Path(__file__).resolve().parents[2]
        if not (root / "function_app.py").is_file():
            raise PermanentError(
                f"function_app.py not found beside {root / 'shared'}", reason="NoApp"
            ) from None
        sys.path.insert(0, str(root))
        import function_app
    return function_app.app


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@contextlib.contextmanager
def running(host: LocalHost, **start_kwargs: bool) -> Iterator[LocalHost]:
    """``with running(host): ...`` — started on entry, stopped gracefully on exit."""
    host.start(**start_kwargs)
    try:
        yield host
    finally:
        host.stop()
