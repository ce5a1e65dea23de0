"""The queue and topic trigger driver: peek-lock receive, settle, lock renewal, output bindings.

What the Functions host does for a Service Bus trigger, against
:class:`shared.adapters.broker.sqlite_broker.SqliteBroker`: one receiver per function with up to
``maxConcurrentCalls`` invocations in flight, complete on success, abandon on an exception,
dead-letter at the last delivery (with the last error as its description), and the renewal of
every in-flight message's lock until ``maxAutoLockRenewalDuration``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.localhost.bindings import (
    HostedFunction,
    Invocation,
    Out,
    OutputBinding,
    call_function,
    describe_error,
    to_function_message,
)
from shared.localhost.config import HostConfig
from shared.settings import Settings

if TYPE_CHECKING:  # the broker is only needed for its type here
    from shared.adapters.broker.sqlite_broker import SqliteBroker

log = logging.getLogger(__name__)

DEAD_LETTER_REASON = "MaxDeliveryCountExceeded"
MAX_DESCRIPTION_CHARS = 1024

Record = Callable[..., Invocation]
Submit = Callable[..., None]


@dataclass
class _InFlight:
    message: Any  # ReceivedMessage
    locked_until: float
    renew_until: float


class QueueDriver:
    """Drives the app's Service Bus triggers (``functions``) on ``broker``."""

    def __init__(
        self,
        functions: list[HostedFunction],
        *,
        broker: SqliteBroker,
        settings: Settings,
        config: HostConfig,
        clock: Callable[[], float],
        idle_poll_s: float,
        record: Record,
        stopping: threading.Event,
    ) -> None:
        self.functions = functions
        self._broker = broker
        self._settings = settings
        self._config = config
        self._clock = clock
        self._idle_poll_s = idle_poll_s
        self._record = record
        self._stopping = stopping
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._closing = threading.Event()

    # --- deterministic drive ---------------------------------------------------------------

    def drain(self, max_messages: int | None = None) -> int:
        """Process every message deliverable now on every trigger, on this thread, triggers taking
        turns one message at a time. Returns the invocations made."""
        done = 0
        progressed = True
        while progressed:
            progressed = False
            for h in self.functions:
                if max_messages is not None and done >= max_messages:
                    return done
                assert h.entity is not None
                msgs = self._broker.receive(h.entity, subscription=h.subscription, max_messages=1)
                if msgs:
                    self.process_message(h, msgs[0])
                    done += 1
                    progressed = True
        return done

    def renew_locks(self, at: float) -> int:
        """Renew the lock of every in-flight message whose lock is within half its duration of
        expiring, until ``maxAutoLockRenewalDuration`` after it was received. Returns renewals."""
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

    def receive_loop(self, h: HostedFunction, submit: Submit) -> None:
        """Receive for ``h`` until the host stops, up to ``maxConcurrentCalls`` in flight, each
        handed to ``submit`` (the host's worker pool) with the slot to release when it is done."""
        slots = threading.BoundedSemaphore(self._config.max_concurrent_calls)
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
            submit(self.process_message, h, msgs[0], release=slots.release)

    def close(self) -> None:
        """Stop the lock renewer (after the host's in-flight invocations have ended)."""
        self._closing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        self._closing.clear()

    # --- one message -----------------------------------------------------------------------

    def process_message(self, h: HostedFunction, rm: Any) -> Invocation:
        """Invoke ``h`` with one received message and settle it as the Functions host does."""
        t0 = time.perf_counter()
        error: str | None = None
        token = str(rm.lock_token)
        with self._inflight_lock:
            self._inflight[token] = _InFlight(
                rm, float(rm.locked_until), self._clock() + self._config.max_auto_lock_renewal_s
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
            outcome = self._settle_failure(rm, err)
        else:
            outcome = self._settle_success(rm)
        finally:
            with self._inflight_lock:
                self._inflight.pop(token, None)
        return self._record(
            h, outcome, t0, message_id=rm.message_id, delivery_count=rm.delivery_count, error=error
        )

    def _settle_success(self, rm: Any) -> str:
        if not self._config.auto_complete_messages:
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

    def _settle_failure(self, rm: Any, err: Exception) -> str:
        if not self._config.auto_complete_messages:
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

    # --- lock renewal ----------------------------------------------------------------------

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
                self.renew_locks(self._clock())
            except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
                log.warning("lock renewer: %s", describe_error(err))
