"""The run: its states (and which are active, terminal, final), the record rlq keeps of one request,
the latest progress a backend saw, and what one poll of a run did (:class:`RunOutcome`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.base import utcnow
from shared.contracts.completion import CompletionMessage, Delivery, Status, StopReason
from shared.contracts.request import TrainingRequest


class RunState(StrEnum):
    received = "received"
    provisioning = "provisioning"
    submitted = "submitted"
    running = "running"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"
    timed_out = "timed_out"
    notified = "notified"
    rejected = "rejected"


ACTIVE = frozenset({RunState.received, RunState.provisioning, RunState.submitted, RunState.running})
TERMINAL = frozenset({RunState.completed, RunState.failed, RunState.canceled, RunState.timed_out})
# Holding (or being given) compute: what the global and the team caps count.
IN_FLIGHT = frozenset({RunState.provisioning, RunState.submitted, RunState.running})
FINAL = TERMINAL | {RunState.notified, RunState.rejected}
STATUS_OF: dict[RunState, Status] = {
    RunState.completed: "Completed",
    RunState.failed: "Failed",
    RunState.canceled: "Canceled",
    RunState.timed_out: "TimedOut",
}


class RunOutcome(StrEnum):
    """What one poll of a run did: the state it moved to (a submit the poller retried may find the
    run taken over, in any state), or what else happened to it.

    ``stalled``: failed for want of progress; ``unreachable``: failed because its backend stopped
    answering; ``published``: a terminal run's completion message went out. The poll tick counts
    them (``TickReport.transitions``).
    """

    # the state it moved to: one per RunState
    received = "received"
    provisioning = "provisioning"
    submitted = "submitted"
    running = "running"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"
    timed_out = "timed_out"
    notified = "notified"
    rejected = "rejected"
    # what else a poll did
    stalled = "stalled"
    unreachable = "unreachable"
    published = "published"
    resumed = "resumed"  # its job was lost with its machines: the next attempt resumes it

    @classmethod
    def entered(cls, state: RunState) -> RunOutcome:
        """The outcome of a poll that moved a run into ``state``."""
        return cls(state.value)


class Progress(BaseModel):
    """The latest training iteration a backend saw (one ``metrics.jsonl`` line)."""

    model_config = ConfigDict(extra="allow")
    iteration: int = 0
    time_total_s: float = 0.0
    timesteps: int = 0
    episode_reward_mean: float | None = None
    episode_reward_min: float | None = None
    episode_reward_max: float | None = None
    episodes_total: int | None = None
    env_steps_per_s: float | None = None


class Attempt(BaseModel):
    """One job of a run that was lost with its machines (the run went on as the next attempt)."""

    model_config = ConfigDict(extra="forbid")

    number: int  # 1 for the first job
    run_id: str | None = None
    started_at: datetime | None = None
    ended_at: datetime
    cause: str  # why it ended, as its backend said
    # The checkpoint the next attempt resumes from (None: none was seen; it starts over).
    resumed_from: str | None = None
    # Timesteps trained after that checkpoint, lost with the job (None: not known).
    steps_lost: int | None = None


class RunRecord(BaseModel):
    """What rlq knows about one request; ``version`` guards every conditional update."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    state: RunState = RunState.received
    request: TrainingRequest | None = None
    backend: str | None = None
    run_id: str | None = None
    message_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    progress_at: datetime | None = None
    stop_reason: StopReason | None = None
    error: str | None = None
    portal_url: str | None = None
    completion: CompletionMessage | None = None
    published_at: datetime | None = None
    notified_at: datetime | None = None
    deliveries: list[Delivery] = Field(default_factory=list)
    cancel_requested: bool = False
    poll_failures: int = 0
    # When the backend first failed to answer a status call in the current streak (None: it answers).
    unreachable_since: datetime | None = None
    claimed_at: datetime | None = None
    # What a ``provisioning`` run waits for (a cluster being created); the poller submits it when ready.
    compute_pending: str | None = None
    deferrals: int = 0
    # Why a deferred request still waits (``waiting for a free slot: …``, ``waiting for team
    # quota: …``, ``waiting in line: …``: shared/core/admission.py); None once it is claimed.
    waiting: str | None = None
    # The run whose final checkpoint this one restored (``restore_from: rlq://<parent_request_id>``).
    parent_request_id: str | None = None
    # Compact reward curve for runs whose metrics file is not local: [iteration, timesteps, reward].
    curve: list[tuple[int, int, float | None]] = Field(default_factory=list)
    # The jobs that were lost with their machines, oldest first (see :attr:`attempt`).
    attempts: list[Attempt] = Field(default_factory=list)
    # The W3C trace context (traceparent, tracestate) of the delivery that claimed the run: later
    # polls join the request's trace from it (shared/telemetry.py). Empty: none was recorded.
    trace_context: dict[str, str] = Field(default_factory=dict)
    version: int = 0

    @property
    def attempt(self) -> int:
        """The number of the run's current (or last) job: 1, 2, …"""
        n = len(self.attempts)
        if n and self.run_id is not None and self.attempts[-1].run_id == self.run_id:
            return n  # the last job's loss ended the run (no attempt was left)
        return n + 1

    @property
    def status(self) -> Status | None:
        if self.completion is not None:
            return self.completion.status
        return STATUS_OF.get(self.state)
