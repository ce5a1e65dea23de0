"""Ports: the small Protocols the orchestration core talks to. Adapters implement them.

Every adapter translates its SDK's errors into :mod:`shared.errors` (``TransientError`` to retry,
``PermanentError`` to give up) at its own boundary.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.models import Model, ModelVersion, PromotionEvent
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress, RunRecord, RunState
from shared.contracts.trainer import JobEnd, TrainerSummary

JobState = Literal["pending", "running", "succeeded", "failed", "stopped"]


@dataclass(frozen=True)
class Checkpoint:
    """A run's complete checkpoint as its backend found it, with the counters it reached."""

    uri: str
    iteration: int = 0
    timesteps: int = 0


@dataclass(frozen=True)
class JobStatus:
    """What a compute backend knows about one job right now."""

    state: JobState
    progress: Progress | None = None
    # The trainer's summary.json (see trainer/train.py) once the job has ended, when readable.
    summary: TrainerSummary | None = None
    error: str | None = None
    portal_url: str | None = None
    # How an ended job ended (None: not ended, or the backend cannot tell): ``JobEnd.lost`` — its
    # machines went away — is the one end the core resumes from ``checkpoint``.
    end: JobEnd | None = None
    # The newest complete checkpoint of the run the backend can see (a lost job's resume point).
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True)
class ComputePending:
    """``ensure_compute``'s answer while the compute is still being created (a cluster provisioning).

    The run stays ``provisioning`` and the poller asks again; it submits once ``ensure_compute``
    answers None (ready).
    """

    detail: str


@runtime_checkable
class ComputeBackend(Protocol):
    """Runs trainer jobs. Every method is idempotent on ``request_id``."""

    name: str

    def ensure_compute(self, request: TrainingRequest) -> ComputePending | None:
        """Make sure the compute exists or is being created; never waits for provisioning.

        None: submit now. :class:`ComputePending`: not yet (the poller calls again).
        """

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        """The run id of a job already submitted for ``request_id``'s ``attempt``, if any."""

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        """Start the job (deterministic name from ``request_id`` and ``attempt``) and return its run id.

        ``attempt`` > 1: the run's earlier job was lost with its machines; this one resumes from
        the run's newest checkpoint that loads, under its own name (``<name>-a<attempt>``).
        """

    def status(self, run_id: str) -> JobStatus: ...

    def cancel(self, run_id: str) -> None: ...


@runtime_checkable
class RunStore(Protocol):
    """Run records with conditional updates (no lost update between racing pollers)."""

    def insert_if_absent(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``record``; return ``(stored, inserted)`` — the existing record when present."""

    def get(self, request_id: str) -> RunRecord | None: ...

    def update(self, record: RunRecord) -> RunRecord:
        """Write ``record`` if the stored version still equals ``record.version``.

        Returns the stored record (version + 1). Raises :class:`shared.errors.Conflict` when
        someone else wrote first, :class:`shared.errors.NotFound` when there is no such record.
        """

    def list(self, *, states: Iterable[RunState] | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first."""

    def count(self, states: Iterable[RunState]) -> int: ...

    # builtins.list: inside this class ``list`` is the method above
    def waiting(self, *, limit: int = 1000) -> builtins.list[RunRecord]:
        """Deferred requests not claimed yet (state ``received``, ``deferrals`` > 0), oldest first."""

    def team_runs(self, team: str, *, since: datetime) -> builtins.list[RunRecord]:
        """``team``'s runs that may have held compute since ``since`` (any order): those in flight
        now (:data:`shared.contracts.run.IN_FLIGHT`) and those updated at or after ``since``."""


@runtime_checkable
class ModelRegistry(Protocol):
    """Named models, their versions and champion (:mod:`shared.contracts.models`).

    The store keeps; the core decides (``shared/core/models.py``: register a version and decide
    the champion, promote, roll back, resolve ``model://``). Every write is one atomic step
    conditional on :attr:`Model.etag`, so two runs of one model completing at once never both
    take the champion, nor lose a version: the loser re-reads and decides again.
    """

    def get_model(self, name: str) -> Model | None: ...

    def list_models(self, *, limit: int = 100) -> list[Model]:
        """By name."""

    def save_model(self, model: Model, *, new_version: ModelVersion | None = None) -> Model:
        """Write ``model`` (and ``new_version`` with it, atomically) if the stored etag still equals
        ``model.etag`` (0: the model must not exist yet). Returns the stored model with its new
        etag. Raises :class:`shared.errors.Conflict` when someone else wrote first or
        ``new_version``'s number is taken."""

    def get_version(self, name: str, version: int) -> ModelVersion | None: ...

    def find_version(self, name: str, request_id: str) -> ModelVersion | None:
        """The version ``request_id``'s run registered under ``name``, if any (registration is
        idempotent on the run)."""

    def list_versions(self, name: str, *, limit: int = 100) -> list[ModelVersion]:
        """Newest first."""


@runtime_checkable
class ChampionMirror(Protocol):
    """Shows a model's champion where a platform's own users look for it (Azure ML's model
    registry, for checkpoints of Azure ML jobs). The :class:`ModelRegistry` stays the authority: a
    mirror is told the champion after each change, at least once, and must be idempotent."""

    def register_champion(self, version: ModelVersion) -> object:
        """Make ``version`` the champion there (registering it when it is not yet)."""


@runtime_checkable
class Publisher(Protocol):
    """Publishes completion messages to the topic (and the request's reply queue)."""

    def publish(self, message: CompletionMessage, *, reply_to: str | None = None) -> None:
        """Idempotent on ``message.message_id``; raises TransientError when it may not have landed."""

    def publish_event(self, event: PromotionEvent) -> None:
        """A ``model-promoted`` event to the topic (subject and ``event`` property ``model-promoted``,
        so subscribers that want completions only filter it out). Idempotent on ``event.message_id``."""


@runtime_checkable
class RequestSender(Protocol):
    """Puts a training request on the intake queue (CLI, HTTP API, deferral)."""

    def send(self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Delivers a completion message to people and services (webhooks, Teams)."""

    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]: ...


@runtime_checkable
class ReadinessProbe(Protocol):
    """A dependency that can say whether it is ready for work (``/api/health``): ``check()``
    returns what it checked, in a few words, and raises when the dependency is not ready (the
    run store cannot write, the queue cannot be reached, the compute does not answer)."""

    def check(self) -> str: ...


@runtime_checkable
class Rejecter(Protocol):
    """Keeps a request that can never run where a person finds it, with the reason.

    Locally the SQLite broker dead-letters the locked message itself; on Azure the plain queue
    binding cannot settle a message, so the request is forwarded to the rejected queue.
    """

    def reject(self, *, message_id: str, body: bytes, reason: str, description: str) -> None: ...


@dataclass(frozen=True)
class DeadLetter:
    """A message in a dead-letter sub-queue, with the reason a person acts on."""

    sequence_number: int
    message_id: str
    body: bytes
    reason: str
    description: str
    delivery_count: int
    dead_lettered_at: datetime
    correlation_id: str | None = None
    content_type: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class DeadLetterInbox(Protocol):
    """Lists dead-lettered messages and sends one back (``rlq dead-letters``)."""

    def dead_letters(
        self, entity: str, *, subscription: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Oldest first."""

    def resubmit_dead_letter(
        self, entity: str, sequence_number: int, *, subscription: str | None = None
    ) -> str:
        """Put a dead letter back as a new message; returns the new message id. KeyError: no such one."""
