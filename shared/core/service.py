"""The orchestration core's one face: what the triggers, the CLI and the local host call.

Imports no SDK and no adapter — only the ports, the contracts, the settings and the policy
modules. Each call is handed to the role that does it: :mod:`shared.core.intake` (accept, claim,
submit, defer, retry, give up, enqueue), :mod:`shared.core.poller` (the poll tick, the watchdog,
cancel), :mod:`shared.core.outbox` (terminal state, completion, publish, notify) and
:mod:`shared.core.readiness`; they share one :class:`~shared.core.context.Core` and write the run
record through :mod:`shared.core.records`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from shared import telemetry
from shared.contracts import message_ids
from shared.contracts.base import utcnow
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.run import RunRecord, RunState
from shared.core.admission import Admission
from shared.core.context import Core
from shared.core.faults import FaultHook
from shared.core.intake import Body, Intake
from shared.core.outbox import Outbox
from shared.core.poller import Poller, TickReport
from shared.core.readiness import TIMEOUT_S as READINESS_TIMEOUT_S
from shared.core.readiness import TTL_S as READINESS_TTL_S
from shared.core.readiness import Readiness, ReadinessGate
from shared.core.records import Records
from shared.errors import PermanentError
from shared.ports import (
    ComputeBackend,
    ModelRegistry,
    Notifier,
    Publisher,
    Rejecter,
    RequestSender,
    RunStore,
)
from shared.settings import Settings


class TrainingService:
    """accept / poll / cancel / notify. One instance per process, built in shared.composition."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: RunStore,
        compute: Mapping[str, ComputeBackend],
        publisher: Publisher,
        sender: RequestSender | None = None,
        notifier: Notifier | None = None,
        rejecter: Rejecter | None = None,
        artifacts: Callable[[RunRecord], object] | None = None,
        clock: Callable[[], datetime] = utcnow,
        faults: FaultHook | None = None,
        readiness_ttl_s: float = READINESS_TTL_S,
        readiness_timeout_s: float = READINESS_TIMEOUT_S,
        models: ModelRegistry | None = None,
    ) -> None:
        if not compute:
            raise ValueError("at least one compute backend is required")
        self.core = Core(
            settings=settings,
            store=store,
            compute=dict(compute),
            publisher=publisher,
            clock=clock,
            sender=sender,
            notifier=notifier,
            rejecter=rejecter,
            artifacts=artifacts,
            faults=faults,
            # the run store keeps the registry when it can (both of rlq's stores do)
            models=models if models is not None else (store if isinstance(store, ModelRegistry) else None),
        )
        self._records = Records(self.core)
        self._outbox = Outbox(self.core, self._records)
        self._intake = Intake(self.core, self._records, Admission(self.core), self._outbox)
        self._poller = Poller(self.core, self._records, self._intake, self._outbox)
        self._readiness = ReadinessGate(
            self._readiness_deps, ttl_s=readiness_ttl_s, timeout_s=readiness_timeout_s
        )
        telemetry.count_runs_with(self._count_runs)

    def intake(
        self,
        body: Body,
        *,
        message_id: str | None,
        delivery_count: int = 1,
        trace_context: Mapping[str, object] | None = None,
    ) -> RunRecord | None:
        """The queue trigger's one call (:meth:`shared.core.intake.Intake.intake`); ``trace_context``:
        the message's application properties, whose trace context the ``rlq.intake`` span continues."""
        with telemetry.span(
            telemetry.INTAKE,
            request_id=message_ids.request_of(message_id) if message_id else None,
            parent=trace_context or {},
            kind=telemetry.CONSUMER,
            attributes={telemetry.MESSAGE_ID: message_id, "messaging.delivery_count": delivery_count},
        ) as span:
            record = self._intake.intake(body, message_id=message_id, delivery_count=delivery_count)
            if record is not None:
                telemetry.name_request(span, record.request_id, record.run_id)
                span.set_attribute(telemetry.STATE, record.state.value)
            return record

    def accept(self, body: Body, *, message_id: str | None, delivery_count: int = 1) -> RunRecord:
        """Validate, record (idempotent on request_id), ensure compute, submit, record the run id."""
        return self._intake.accept(body, message_id=message_id, delivery_count=delivery_count)

    def enqueue(self, body: Body) -> str:
        """Validate here (so a caller sees field errors at once), record, then queue; the request id."""
        with telemetry.span(telemetry.ENQUEUE, kind=telemetry.PRODUCER) as span:
            try:
                request_id = self._intake.enqueue(body)
            except PermanentError as err:
                telemetry.REQUESTS_REFUSED.add(1, {telemetry.VIA: "api", telemetry.REASON: err.reason})
                raise
            telemetry.name_request(span, request_id)
            return request_id

    def poll_once(self) -> TickReport:
        """One timer tick: every active run polled with bounded concurrency and a time budget."""
        report = self._poller.poll_once()
        telemetry.POLL_TICK.record(report.wall_s)
        return report

    def cancel(self, request_id: str) -> RunRecord:
        return self._poller.cancel(request_id)

    def notify(
        self, message: CompletionMessage, *, trace_context: Mapping[str, object] | None = None
    ) -> list[Delivery]:
        """The topic trigger's call: deliver to webhooks / Teams and record each outcome on the run;
        ``trace_context``: the message's application properties (the ``rlq.notify`` span's parent)."""
        with telemetry.span(
            telemetry.NOTIFY,
            request_id=message.request_id,
            run_id=message.run_id,
            parent=trace_context or {},
            kind=telemetry.CONSUMER,
            attributes={telemetry.MESSAGE_ID: message.message_id, "rlq.status": message.status},
        ):
            return self._outbox.notify(message)

    def readiness(self) -> Readiness:
        """The run store takes a write, the request queue and the completion topic take messages,
        each compute backend answers: each checked once, without retries, side by side and bounded
        in time; the answer is reused for a few seconds (:mod:`shared.core.readiness`). A check
        that fails is reported, not raised."""
        return self._readiness.readiness()

    def _readiness_deps(self) -> list[tuple[str, object]]:
        core = self.core
        deps: list[tuple[str, object]] = [
            ("store", core.store),
            ("queue", core.sender),
            ("topic", core.publisher),
        ]
        deps += [(f"compute:{name}", backend) for name, backend in core.compute.items()]
        return deps

    def _count_runs(self) -> dict[str, int]:
        """Run records by state (the ``rlq.runs`` gauge)."""
        return {state.value: self.core.store.count([state]) for state in RunState}

    def get(self, request_id: str) -> RunRecord:
        """The run record; :class:`shared.errors.NotFound` when there is none."""
        return self._records.load(request_id)

    def list(self, *, states: Iterable[RunState] | None = None, limit: int = 100) -> list[RunRecord]:
        return self.core.store.list(states=states, limit=limit)
