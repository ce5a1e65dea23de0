"""Ports: the small Protocols the orchestration core talks to. Adapters implement them.

Every adapter translates its SDK's errors into :mod:`shared.errors` (``TransientError`` to retry,
``PermanentError`` to give up) at its own boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from shared.models import CompletionMessage, Delivery, Progress, RunRecord, RunState, TrainingRequest

JobState = Literal["pending", "running", "succeeded", "failed", "stopped"]


@dataclass(frozen=True)
class JobStatus:
    """What a compute backend knows about one job right now."""

    state: JobState
    progress: Progress | None = None
    # The trainer's summary.json (see trainer/train.py) once the job has ended, when readable.
    summary: dict[str, Any] | None = None
    error: str | None = None
    portal_url: str | None = None


@runtime_checkable
class ComputeBackend(Protocol):
    """Runs trainer jobs. Every method is idempotent on ``request_id``."""

    name: str

    def ensure_compute(self, request: TrainingRequest) -> None:
        """Make sure the compute exists or is being created; never waits for provisioning."""

    def find(self, request_id: str) -> str | None:
        """The run id of a job already submitted for ``request_id``, if any."""

    def submit(self, request: TrainingRequest) -> str:
        """Start the job (deterministic name from ``request_id``) and return its run id."""

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


@runtime_checkable
class Publisher(Protocol):
    """Publishes completion messages to the topic (and the request's reply queue)."""

    def publish(self, message: CompletionMessage, *, reply_to: str | None = None) -> None:
        """Idempotent on ``message.message_id``; raises TransientError when it may not have landed."""


@runtime_checkable
class RequestSender(Protocol):
    """Puts a training request on the intake queue (CLI, HTTP API, deferral)."""

    def send(self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Delivers a completion message to people and services (webhooks, Teams)."""

    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]: ...


@dataclass
class TickReport:
    """What one poll tick did."""

    polled: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    published: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0
