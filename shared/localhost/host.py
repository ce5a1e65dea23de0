"""The local Functions host's lifecycle: runs a ``func.FunctionApp`` on the SQLite broker.

The Azure Functions host owns the parts of a trigger that a handler never sees. :class:`LocalHost`
owns their life here — start, graceful stop, Ctrl-C / SIGTERM, the worker pool every invocation
runs on, the invocation log — and hands each trigger kind to its driver: :mod:`.queue_driver`
(peek-lock receive, settle, dead-letter, lock renewal, ``maxConcurrentCalls``),
:mod:`.timer_driver` (NCRONTAB schedules with a singleton lock) and :mod:`.http_driver` (routing,
served by waitress). The handlers in ``functions/`` run unchanged locally and in tests.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import azure.functions as func

from shared.errors import PermanentError
from shared.localhost.bindings import (
    HTTP_TRIGGER,
    SB_TRIGGER,
    TIMER_TRIGGER,
    FunctionInfo,
    HostedFunction,
    Invocation,
    load_functions,
)
from shared.localhost.config import HostConfig, LocalHostError, default_host_json, resolve_app_settings
from shared.localhost.http_driver import HttpDriver
from shared.localhost.queue_driver import QueueDriver
from shared.localhost.timer_driver import TimerDriver
from shared.settings import Settings

if TYPE_CHECKING:  # the broker and the wiring are only needed for their types here
    from shared.adapters.broker.sqlite_broker import SqliteBroker
    from shared.composition import Wiring

log = logging.getLogger(__name__)

Clock = Callable[[], float]


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
        self._settings = settings
        self._clock = clock
        self.config = HostConfig.load(host_json if host_json is not None else default_host_json())
        self._functions = load_functions(app, self._resolve)
        self._stopping = threading.Event()
        self._queues = QueueDriver(
            [f for f in self._functions if f.trigger_type == SB_TRIGGER],
            broker=broker,
            settings=settings,
            config=self.config,
            clock=clock,
            idle_poll_s=idle_poll_s,
            record=self._record,
            stopping=self._stopping,
        )
        self._timers = TimerDriver(
            [f for f in self._functions if f.trigger_type == TIMER_TRIGGER],
            clock=clock,
            record=self._record,
            stopping=self._stopping,
        )
        self._http = HttpDriver(
            [f for f in self._functions if f.trigger_type == HTTP_TRIGGER],
            route_prefix=self.config.route_prefix,
            record=self._record,
            port=http_port,
            threads=http_threads,
            backlog=http_backlog,
            idle_timeout_s=http_idle_timeout_s,
        )
        self._invocations: deque[Invocation] = deque(maxlen=1000)
        self._stop_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[Any]] = set()
        self._futures_lock = threading.Lock()
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
        return self._timers.next_due(name)

    # --- deterministic drive (tests: no threads, no sleeps) ---------------------------------

    def drain(self, max_messages: int | None = None) -> int:
        """Process every message deliverable now on every Service Bus trigger, on this thread.

        Triggers take turns one message at a time. An abandoned message is deliverable again at
        once (as on Service Bus), so a message that keeps failing is retried in the same drain
        until the broker's max delivery count dead-letters it. Returns the invocations made.
        """
        return self._queues.drain(max_messages)

    def tick_timers(self, now: float | datetime | None = None) -> list[str]:
        """Run, on this thread, every timer function due at ``now`` (default: the clock).

        A timer still running elsewhere is skipped and stays due (the host's singleton lock), so
        it fires late, marked past due, on a later tick. Returns the names that ran.
        """
        return self._timers.tick(self._epoch(now))

    def renew_locks(self, now: float | datetime | None = None) -> int:
        """Renew the lock of every in-flight message whose lock is within half its duration of
        expiring, until ``maxAutoLockRenewalDuration`` after it was received. Returns renewals."""
        return self._queues.renew_locks(self._epoch(now))

    def handle_http(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> func.HttpResponse:
        """Route one request to its function (also usable without a socket, e.g. in tests)."""
        return self._http.handle(method, url, headers, body)

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The WSGI face of :meth:`handle_http` (what the HTTP server calls)."""
        return self._http.wsgi(environ, start_response)

    # --- background drive ------------------------------------------------------------------

    def start(self, *, queues: bool = True, timers: bool = True, http: bool = True) -> LocalHost:
        """Start receivers (``maxConcurrentCalls`` per Service Bus function), the timer loop and
        the HTTP server on background threads; returns at once."""
        if self._started:
            raise RuntimeError("the host is already started")
        self._started = True
        self._stopping.clear()
        workers = (
            (self.config.max_concurrent_calls * len(self._queues.functions) if queues else 0)
            + len(self._timers.functions)
            + 1
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlq-fn")
        if http and self._http.functions:
            self._http.start()
        if queues:
            for h in self._queues.functions:
                self._spawn(f"rlq-recv-{h.name}", self._queues.receive_loop, h, self._submit)
        if timers and self._timers.functions:
            self._spawn("rlq-timers", self._timers.loop, self._submit)
        log.info(
            "host started: %d function(s)%s",
            len(self._functions),
            f"; http on {self.base_url}/{self.config.route_prefix}" if self._http.server else "",
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
        self._http.stop(timeout_s)
        self._queues.close()
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
        return self._http.port

    @property
    def base_url(self) -> str:
        return self._http.base_url

    # --- shared plumbing -------------------------------------------------------------------

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


@contextlib.contextmanager
def running(host: LocalHost, **start_kwargs: bool) -> Iterator[LocalHost]:
    """``with running(host): ...`` — started on entry, stopped gracefully on exit."""
    host.start(**start_kwargs)
    try:
        yield host
    finally:
        host.stop()
