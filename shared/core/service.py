"""The orchestration core's one face: what the triggers, the CLI and the local host call.

Imports no SDK and no adapter — only the ports, the contracts, the settings and the policy
modules. Each call is handed to the role that does it: :mod:`shared.core.intake` (accept, claim,
submit, defer, retry, give up, enqueue), :mod:`shared.core.poller` (the poll tick, the watchdog,
cancel), :mod:`shared.core.outbox` (terminal state, completion, publish, notify) and
:mod:`shared.core.readiness`; they share one :class:`~shared.core.context.Core` and write the run
record through :mod:`shared.core.records`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from shared import telemetry
from shared.contracts import message_ids
from shared.contracts.base import utcnow
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.models import Model, ModelDetail, PromotionEvent
from shared.contracts.run import RunRecord, RunState
from shared.core.admission import Admission
from shared.core.context import Core
from shared.core.faults import FaultHook
from shared.core.intake import Body, Intake
from shared.core.models import Champions
from shared.core.outbox import Outbox
from shared.core.poller import Poller, TickReport
from shared.core.readiness import TIMEOUT_S as READINESS_TIMEOUT_S
from shared.core.readiness import TTL_S as READINESS_TTL_S
from shared.core.readiness import Readiness, ReadinessGate
from shared.core.records import Records
from shared.errors import NotFound, PermanentError
from shared.ports import (
    ChampionMirror,
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
        champion_mirrors: Mapping[str, ChampionMirror] | None = None,
    ) -> None:
        if not compute:
            raise ValueError("at least one compute backend is required")
        # by backend: where a champion whose checkpoint is on that backend is shown too (docs/models.md)
        self._mirrors = dict(champion_mirrors or {})
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

    # --- models and champions (docs/models.md): the API's, the CLI's and the dashboard's reads and a
    # person's decisions; the rule's own decisions happen when a run completes (the outbox)

    def _champions(self) -> Champions:
        champions = self.core.champions()
        if champions is None:
            raise NotFound("this deployment keeps no model registry")
        return champions

    def list_models(self, *, limit: int = 100) -> builtins.list[Model]:
        """Models by name."""
        return self._champions().registry.list_models(limit=limit)

    def model(self, name: str, *, limit: int = 100) -> ModelDetail | None:
        """The model with its champion and versions (newest first, at most ``limit``); None: no such model."""
        registry = self._champions().registry
        model = registry.get_model(name)
        if model is None:
            return None
        champion = (
            registry.get_version(name, model.champion_version) if model.champion_version is not None else None
        )
        return ModelDetail(model=model, champion=champion, versions=registry.list_versions(name, limit=limit))

    def promote(self, name: str, version: int, *, reason: str) -> ModelDetail:
        """A person makes ``version`` the champion (recorded with ``reason``; published once)."""
        self._champions().promote(name, version, reason=reason)
        return self._detail(name)

    def rollback(self, name: str, *, reason: str) -> ModelDetail:
        """A person makes the champion before the current one champion again."""
        self._champions().rollback(name, reason=reason)
        return self._detail(name)

    def mirror_champion(self, event: PromotionEvent) -> bool:
        """A ``model-promoted`` event from the topic: show the champion on its backend's mirror (Azure
        ML's model registry), if that backend has one. An event that is no longer the model's latest
        change is skipped (the later one's own event shows its champion), so redelivered or
        reordered events never put back an older champion. True when a mirror was told."""
        champions = self.core.champions()
        model = champions.registry.get_model(event.model) if champions is not None else None
        if champions is None or model is None or model.promotions != event.sequence:
            return False
        version = champions.registry.get_version(event.model, event.to_version)
        mirror = self._mirrors.get(version.backend or "") if version is not None else None
        if version is None or mirror is None:
            return False
        mirror.register_champion(version)  # TransientError: the topic redelivers the event
        return True

    def _detail(self, name: str) -> ModelDetail:
        detail = self.model(name)
        if detail is None:
            raise NotFound(f"no model {name!r}")
        return detail
