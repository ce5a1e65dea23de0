"""The poll tick: every active run's job asked for its status, the answer turned into a transition,
and the one watchdog that ends a run its backend cannot end (time limit, stall, no answer)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from shared import telemetry
from shared.contracts.run import FINAL, TERMINAL, Attempt, Progress, RunOutcome, RunRecord, RunState
from shared.contracts.trainer import JobEnd, TrainerSummary
from shared.core.context import Core
from shared.core.intake import Intake
from shared.core.outbox import Outbox
from shared.core.records import Records
from shared.errors import PermanentError, TransientError
from shared.ports import ComputeBackend, JobStatus

log = logging.getLogger(__name__)

CURVE_POINTS = 300


@dataclass
class TickReport:
    """What one poll tick did (the poller's output, logged by the timer trigger)."""

    polled: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    published: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0


class Verdict(Enum):
    """The watchdog's answer about a run that has not ended by itself."""

    healthy = "healthy"  # nothing to do
    timed_out = "timed_out"  # past its time limit (:meth:`Poller.limit_s`)
    stalled = "stalled"  # running, and no training progress for ``stall_timeout_s``
    unreachable = "unreachable"  # its backend has not answered for ``unreachable_timeout_s``


# How a run the watchdog ends is recorded (its state and stop reason) and counted by the tick.
ENDINGS: dict[Verdict, tuple[RunState, str, RunOutcome]] = {
    Verdict.timed_out: (RunState.timed_out, "time_limit", RunOutcome.timed_out),
    Verdict.stalled: (RunState.failed, "stalled", RunOutcome.stalled),
    Verdict.unreachable: (RunState.failed, "error", RunOutcome.unreachable),
}


class Poller:
    def __init__(self, core: Core, records: Records, intake: Intake, outbox: Outbox) -> None:
        self.core = core
        self.records = records
        self.intake = intake
        self.outbox = outbox
        self._pool_size = 0
        self._pool_lock = threading.Lock()
        self._pool_now: ThreadPoolExecutor | None = None

    def poll_once(self) -> TickReport:
        """One timer tick: every active run polled with bounded concurrency and a time budget."""
        started = time.monotonic()
        report = TickReport()
        todo = self.core.store.list(
            states=[
                RunState.submitted,
                RunState.running,
                *TERMINAL,
                RunState.received,
                RunState.provisioning,
            ],
            limit=1_000_000,
        )
        todo = [r for r in todo if _needs_poll(r)]
        if not todo:
            report.wall_s = time.monotonic() - started
            return report
        futures = {self._pool().submit(self._poll_traced, r): r for r in todo}
        done, pending = wait(futures, timeout=self.core.settings.poll_tick_budget_s)
        for fut in pending:  # not started yet: left for the next tick (one already running finishes)
            fut.cancel()
        for fut in done:
            try:
                outcome = fut.result()
            except Exception as err:  # noqa: BLE001 - one run's failure never blocks the others
                request_id = futures[fut].request_id
                report.errors.append(f"{request_id}: {type(err).__name__}: {err}")
                log.warning("poll of %s failed: %s", request_id, err)
                continue
            report.polled += 1
            if outcome:
                report.transitions[outcome.value] = report.transitions.get(outcome.value, 0) + 1
                if outcome is RunOutcome.published:
                    report.published += 1
        report.skipped = len(pending)
        report.wall_s = time.monotonic() - started
        if report.skipped:
            log.warning("poll tick over its budget: %d runs left for the next tick", report.skipped)
        return report

    def _pool(self) -> ThreadPoolExecutor:
        """The poll workers, kept from tick to tick.

        A pool per tick would start ``poll_concurrency`` new threads every tick, and every new
        thread opens its own connections (the SQLite store and broker keep one per thread, open
        until the store closes): file descriptors grew by about two per worker per tick.
        """
        size = self.core.settings.poll_concurrency
        with self._pool_lock:
            if self._pool_now is None or self._pool_size != size:
                if self._pool_now is not None:
                    self._pool_now.shutdown(wait=False, cancel_futures=True)
                self._pool_now = ThreadPoolExecutor(max_workers=size, thread_name_prefix="rlq-poll")
                self._pool_size = size
            return self._pool_now

    def _poll_traced(self, record: RunRecord) -> RunOutcome | None:
        """:meth:`_poll_one` in the run's trace: a ``rlq.poll`` span kept when the poll changed the run."""
        with telemetry.poll_span(record.request_id, record.run_id, record.trace_context) as span:
            outcome = self._poll_one(record)
            span.changed(outcome)
            return outcome

    def _poll_one(self, record: RunRecord) -> RunOutcome | None:
        if record.state in TERMINAL:
            return RunOutcome.published if self.outbox.publish(record) else None
        if record.state is RunState.provisioning and record.compute_pending and not record.cancel_requested:
            return self.intake.submit_when_ready(record)
        if record.state in (RunState.received, RunState.provisioning):
            self.outbox.terminate(record, state=RunState.canceled, stop_reason="canceled")
            return RunOutcome.canceled
        backend = self.core.backend(record)
        assert record.run_id is not None  # submitted or running: the job exists
        try:
            if record.cancel_requested:
                backend.cancel(record.run_id)
            status = backend.status(record.run_id)
        except TransientError as err:
            return self._unanswered(record, backend, err)
        except PermanentError as err:
            status = JobStatus(state="failed", error=err.description)
        return self._apply(record, backend, status)

    # --- the watchdog ------------------------------------------------------------------------------

    def watch(
        self,
        record: RunRecord,
        now: datetime,
        *,
        silent_since: datetime | None = None,
        progress_at: datetime | None = None,
    ) -> Verdict:
        """The one watchdog: should a run that is still active be ended, and why.

        ``silent_since``: the backend has not answered since then (None: it answered this tick,
        reporting progress up to ``progress_at``). A run past its time limit is ``timed_out``
        whether or not its backend answers; one whose backend is silent for
        ``unreachable_timeout_s`` is ``unreachable``; a running one whose backend answers without
        progress for ``stall_timeout_s`` is ``stalled``.
        """
        settings = self.core.settings
        began = record.started_at or record.submitted_at or record.created_at
        if (now - began).total_seconds() > self.limit_s(record):
            return Verdict.timed_out
        if silent_since is not None:
            silent_s = (now - silent_since).total_seconds()
            return Verdict.unreachable if silent_s > settings.unreachable_timeout_s else Verdict.healthy
        last = progress_at or record.progress_at or began
        if record.state is RunState.running and (now - last).total_seconds() > settings.stall_timeout_s:
            return Verdict.stalled
        return Verdict.healthy

    def limit_s(self, record: RunRecord) -> float:
        """How long a run may go on before the watchdog cancels it as ``timed_out``.

        Not the trainer's own time budget (:func:`shared.contracts.trainer.trainer_time_budget_s`,
        passed as ``--stop time_total_s``), at which a healthy trainer stops itself: the watchdog
        is the outer bound for a job that does not, with room for start-up and checkpointing.
        """
        req = record.request
        limit: float = self.core.settings.default_run_duration_s
        if req is not None:
            limit = (
                req.compute.max_run_duration_s
                or (req.stop.time_total_s and req.stop.time_total_s * 2 + 600)
                or limit
            )
        return float(min(limit, self.core.settings.max_run_duration_s))

    def _ending(
        self, record: RunRecord, verdict: Verdict, silence: TransientError | None = None
    ) -> dict[str, Any]:
        """The terminal fields of a run the watchdog ends (``silence``: the backend's last failure)."""
        # Any: RunRecord fields of different types
        state, stop_reason, _ = ENDINGS[verdict]
        settings = self.core.settings
        if verdict is Verdict.timed_out:
            error = f"run exceeded its maximum duration of {self.limit_s(record):.0f} s"
            if silence is not None:
                error += f" (its backend did not answer: {silence})"
        elif verdict is Verdict.stalled:
            error = f"no training progress for {settings.stall_timeout_s:.0f} s"
        else:
            error = (
                f"the compute backend did not answer for {settings.unreachable_timeout_s:.0f} s "
                f"(last: {silence}); the run is given up, its outcome unknown"
            )
        return {"state": state, "stop_reason": stop_reason, "error": error}

    def _unanswered(self, record: RunRecord, backend: ComputeBackend, err: TransientError) -> RunOutcome:
        """The backend did not answer this tick. The run still ends — at its time limit, or once the
        backend has not answered for ``unreachable_timeout_s`` — instead of staying active for good."""
        now = self.core.clock()
        since = record.unreachable_since or now
        verdict = self.watch(record, now, silent_since=since)
        if verdict is Verdict.healthy:
            self.records.update(record, poll_failures=record.poll_failures + 1, unreachable_since=since)
            silent_s = (now - since).total_seconds()
            raise TransientError(
                f"status of {record.run_id}: {err} (no answer for {silent_s:.0f} s)"
            ) from err
        try:
            backend.cancel(record.run_id or "")
        except (TransientError, PermanentError) as cancel_err:
            log.warning("could not cancel %s on giving it up: %s", record.run_id, cancel_err)
        self.outbox.terminate(record, **self._ending(record, verdict, silence=err))
        return ENDINGS[verdict][2]

    # --- status → transition -----------------------------------------------------------------------

    def _apply(self, record: RunRecord, backend: ComputeBackend, status: JobStatus) -> RunOutcome | None:
        now = self.core.clock()
        changes = _observed(record, status, now)
        if "progress" in changes and _first_iteration(record, changes["progress"]):
            telemetry.FIRST_ITERATION.record(telemetry.seconds_between(record.created_at, now) or 0.0)
        outcome: RunOutcome | None = None
        if status.state == "running" and record.state is RunState.submitted:
            changes.update(  # a resumed run keeps its first start: the time limit covers every attempt
                state=RunState.running,
                started_at=record.started_at or now,
                progress_at=changes.get("progress_at", now),
            )
            outcome = RunOutcome.running
        if status.state == "failed" and status.end is JobEnd.lost and not record.cancel_requested:
            return self._lost(record, status, now)
        if status.state in ("succeeded", "failed", "stopped"):
            changes.update(_terminal_fields(record, status))
            self.outbox.terminate(record, summary=status.summary, **changes)
            return RunOutcome.entered(changes["state"])
        verdict = self.watch(record, now, progress_at=changes.get("progress_at"))
        if verdict is not Verdict.healthy:
            backend.cancel(record.run_id or "")
            changes.update(self._ending(record, verdict))
            self.outbox.terminate(record, **changes)
            return ENDINGS[verdict][2]
        if len(changes) == 1 and not record.poll_failures:
            return outcome  # nothing new: no write
        self.records.update(record, **changes)
        return outcome

    # --- a job lost with its machines ---------------------------------------------------------------

    def _lost(self, record: RunRecord, status: JobStatus, now: datetime) -> RunOutcome:
        """The job was lost with its machines (:attr:`JobEnd.lost`): the run resumes from its newest
        checkpoint as the next attempt, or fails once ``max_attempts`` jobs were lost.

        The attempt is recorded first (state ``provisioning``, waiting for its submit), then
        submitted through the intake's claim and ``find`` before ``submit`` under the attempt's own
        job name: rlq dying at any point leaves the next tick to submit it, never twice.
        """
        checkpoint = status.checkpoint
        seen = max(_timesteps(record.progress), _timesteps(status.progress))
        lost = Attempt(
            number=record.attempt,
            run_id=record.run_id,
            started_at=record.submitted_at,
            ended_at=now,
            cause=status.error or "the job ended without a trainer exit code",
            resumed_from=checkpoint.uri if checkpoint else None,
            steps_lost=max(seen - (checkpoint.timesteps if checkpoint else 0), 0) if seen else None,
        )
        attempts = [*record.attempts, lost]
        limit = self.core.settings.max_attempts
        if len(attempts) >= limit:
            causes = "; ".join(f"attempt {a.number}: {a.cause}" for a in attempts)
            self.outbox.terminate(
                record,
                attempts=attempts,
                state=RunState.failed,
                stop_reason="error",
                error=f"lost its machines on all {len(attempts)} attempts allowed ({causes})",
                progress=_later(record.progress, status.progress),
            )
            return RunOutcome.failed
        log.warning(
            "request %s: job %s lost (%s); resuming from %s as attempt %d of %d",
            record.request_id,
            record.run_id,
            lost.cause,
            lost.resumed_from or "the start",
            len(attempts) + 1,
            limit,
        )
        resumed = self.records.update(
            record,
            attempts=attempts,
            state=RunState.provisioning,
            compute_pending=f"attempt {len(attempts) + 1} of {limit}: resuming after a lost job",
            claimed_at=None,
            run_id=None,
            progress=None,  # the next job counts on from the checkpoint, below what was seen
            unreachable_since=None,
            poll_failures=0,
        )
        if resumed.state is RunState.provisioning and resumed.attempt == len(attempts) + 1:
            self.intake.submit_when_ready(resumed)
        return RunOutcome.resumed

    # --- cancel ------------------------------------------------------------------------------------

    def cancel(self, request_id: str) -> RunRecord:
        """Ask for a run to be canceled: recorded at once, the job canceled now if it exists; the
        next poll tick ends the run (and retries a cancel its backend did not take)."""
        record = self.records.load(request_id)
        if record.state in FINAL or record.cancel_requested:
            return record
        record = self.records.update(record, cancel_requested=True)
        if record.run_id is not None:
            try:
                self.core.backend(record).cancel(record.run_id)
            except TransientError as err:
                log.warning("cancel of %s will be retried by the poller: %s", request_id, err)
        return record


def _needs_poll(record: RunRecord) -> bool:
    if record.state in TERMINAL:
        return record.published_at is None
    if record.state is RunState.provisioning and record.compute_pending:
        return True  # waiting for a cluster: the poller submits it once the cluster is up
    if record.state in (RunState.received, RunState.provisioning):
        return record.cancel_requested  # otherwise the queue owns it until it is submitted
    return True


def _observed(record: RunRecord, status: JobStatus, now: datetime) -> dict[str, Any]:
    """The fields a status answer changes on a run that goes on (always ``poll_failures``)."""
    # Any: RunRecord fields of different types
    changes: dict[str, Any] = {"poll_failures": 0}
    if record.unreachable_since is not None:
        changes["unreachable_since"] = None  # it answers again
    if status.portal_url and status.portal_url != record.portal_url:
        changes["portal_url"] = status.portal_url
    if status.error and status.state in ("pending", "running") and status.error != record.error:
        changes["error"] = status.error  # reported while the run goes on (e.g. its worker nodes died)
    progress = status.progress
    if progress is not None and (
        record.progress is None
        or progress.iteration > record.progress.iteration
        or progress.timesteps > record.progress.timesteps
    ):
        changes.update(progress=progress, progress_at=now, curve=_append_curve(record.curve, progress))
    return changes


def _terminal_fields(record: RunRecord, status: JobStatus) -> dict[str, Any]:
    """The terminal state, stop reason and error a backend's final answer means."""
    # Any: RunRecord fields of different types
    summary = status.summary or TrainerSummary()
    stop = record.request.stop if record.request else None
    stop_reason = summary.stop_reason
    if status.state == "stopped":
        state = RunState.canceled
        stop_reason = "canceled"
    elif status.state == "failed" or summary.error:
        state, stop_reason = RunState.failed, stop_reason if stop_reason in ("stalled",) else "error"
    elif stop_reason == "canceled":
        state = RunState.canceled
    elif stop_reason == "time_limit" and stop is not None and stop.episode_reward_mean is not None:
        state = RunState.timed_out  # the budget ran out before the reward target
    else:
        state = RunState.completed
    error = summary.error or status.error
    if state is RunState.canceled and not record.cancel_requested:
        error = error or "the job was stopped outside rlq"
    return {
        "state": state,
        "stop_reason": stop_reason,
        "error": error if state is not RunState.completed else None,
    }


def _first_iteration(record: RunRecord, progress: Progress) -> bool:
    """Whether ``progress`` is the first iteration of the run's first job."""
    before = record.progress.iteration if record.progress is not None else 0
    return not record.attempts and before < 1 <= progress.iteration


def _timesteps(progress: Progress | None) -> int:
    return progress.timesteps if progress is not None else 0


def _later(a: Progress | None, b: Progress | None) -> Progress | None:
    return b if a is None or (b is not None and b.timesteps >= a.timesteps) else a


def _append_curve(
    curve: list[tuple[int, int, float | None]], progress: Progress
) -> list[tuple[int, int, float | None]]:
    out = [*list(curve), (progress.iteration, progress.timesteps, progress.episode_reward_mean)]
    if len(out) > CURVE_POINTS:  # keep the first point and thin the rest evenly
        out = [out[0], *out[1::2]]
    return out
