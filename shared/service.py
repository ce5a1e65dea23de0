"""The orchestration core: accept a request, poll its run, publish the completion message.

Imports no SDK — only the ports and the models. Delivery is at-least-once everywhere, so every step
is written so that running it twice, or dying between any two lines, never yields two jobs and
never loses a request:

* the run record is inserted if absent on ``request_id`` before anything else happens;
* one delivery *claims* the record (a conditional update ``received → provisioning``); a duplicate
  arriving while the claim is fresh leaves the work to the claimer, whose own message is
  redelivered by the queue if it dies; a stale claim is taken over;
* backends find a job already submitted for a request (deterministic name / tag) before submitting;
* the completion message is written to the record (outbox) before it is published, and published
  again on every tick until the publish is recorded.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared import curves
from shared.contracts import message_ids
from shared.contracts.base import utcnow
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.parsing import parse_request
from shared.contracts.request import TrainingRequest, resource_problems
from shared.contracts.run import FINAL, STATUS_OF, TERMINAL, Progress, RunOutcome, RunRecord, RunState
from shared.contracts.trainer import TrainerSummary
from shared.contracts.vm_sizes import VM_SIZES
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound, PermanentError, TransientError
from shared.ports import (
    ComputeBackend,
    JobStatus,
    Notifier,
    Publisher,
    Rejecter,
    RequestSender,
    RunStore,
)
from shared.readiness import TIMEOUT_S as READINESS_TIMEOUT_S
from shared.readiness import TTL_S as READINESS_TTL_S
from shared.readiness import Readiness, ReadinessGate
from shared.settings import Settings
from shared.urlguard import check_request_urls

log = logging.getLogger(__name__)

# Step boundaries where the fault hook may kill the process (see tests/faults).
FAULT_POINTS = ("validated", "inserted", "ensured", "submitted", "recorded", "terminal", "published")
CURVE_POINTS = 300
MAX_UPDATE_ATTEMPTS = 8


@dataclass
class TickReport:
    """What one poll tick did (the poller's output, logged by the timer trigger)."""

    polled: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    published: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0


def env_faults() -> Callable[[str], None] | None:
    """``RLQ_FAULT_AT=<point>[,<point>…]``: SIGKILL this process when a listed point is reached.

    Used by the crash-matrix tests; a real kill, not an exception, so nothing gets to clean up.
    """
    points = {p.strip() for p in os.environ.get("RLQ_FAULT_AT", "").split(",") if p.strip()}
    if not points:
        return None
    unknown = points - set(FAULT_POINTS)
    if unknown:
        raise ValueError(
            f"RLQ_FAULT_AT: unknown point(s) {sorted(unknown)}; allowed: {', '.join(FAULT_POINTS)}"
        )

    def hook(point: str) -> None:
        if point in points:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


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
        faults: Callable[[str], None] | None = None,
        readiness_ttl_s: float = READINESS_TTL_S,
        readiness_timeout_s: float = READINESS_TIMEOUT_S,
    ) -> None:
        if not compute:
            raise ValueError("at least one compute backend is required")
        self.settings = settings
        self.store = store
        self.compute = dict(compute)
        self.publisher = publisher
        self.sender = sender
        self.notifier = notifier
        self.rejecter = rejecter
        self.artifacts = artifacts
        self.clock = clock
        self._faults = faults
        self._poll_pool: ThreadPoolExecutor | None = None
        self._poll_pool_size = 0
        self._poll_pool_lock = threading.Lock()
        self._readiness = ReadinessGate(
            self._readiness_deps, ttl_s=readiness_ttl_s, timeout_s=readiness_timeout_s
        )

    # --- intake --------------------------------------------------------------------------------

    def intake(
        self, body: bytes | str | dict[str, Any], *, message_id: str | None, delivery_count: int = 1
    ) -> RunRecord | None:
        """The queue trigger's one call: accept, or reject for good (never retried ten times).

        A transient failure schedules a re-send of the request (``<request_id>:retry:<n>``) after
        ``intake_retry_base_s`` doubling up to ``intake_retry_max_delay_s``, and this message is
        done: an outage waits minutes instead of spending the queue's deliveries in a second. Past
        ``intake_retry_attempts`` re-sends the request goes to the dead-letter queue. When no
        re-send is possible (no sender, or the queue itself failing) the error propagates, so the
        trigger abandons the message and the queue redelivers it. Given up either way, the run
        record says the request went to the dead-letter queue (state ``rejected``, the last error,
        the command that resubmits it), so it is accounted for; a resubmitted copy runs.
        """
        try:
            return self.accept(body, message_id=message_id, delivery_count=delivery_count)
        except TransientError as err:
            retried = self._retry_later(body, message_id, err)
            if retried is not None:
                return retried
            if delivery_count >= self.settings.max_delivery_count:
                self._record_give_up(body, message_id, f"after {delivery_count} deliveries", err)
            raise
        except PermanentError as err:
            log.warning("rejected message %s: %s: %s", message_id, err.reason, err.description)
            record = self._record_rejection(body, message_id, err)
            if self.rejecter is not None:
                raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
                self.rejecter.reject(
                    message_id=message_id or "",
                    body=raw,
                    reason=err.reason,
                    description=err.description[:4096],
                )
            return record

    def accept(
        self, body: bytes | str | dict[str, Any], *, message_id: str | None, delivery_count: int = 1
    ) -> RunRecord:
        """Validate, record (idempotent on request_id), ensure compute, submit, record the run id."""
        request = parse_request(body, default_id=message_id, max_bytes=self.settings.max_body_bytes)
        self._check_caps(request)
        request, parent_id = self._resolve_restore(request)
        self._fault("validated")
        backend_name = self._backend_name(request)
        record, inserted = self.store.insert_if_absent(
            RunRecord(
                request_id=request.request_id,
                request=request,
                backend=backend_name,
                message_id=message_id,
                parent_request_id=parent_id,
                created_at=self.clock(),
                updated_at=self.clock(),
            )
        )
        self._fault("inserted")
        if not inserted and record.state is RunState.rejected:
            # An earlier delivery under this id could not be read, was over a cap, or outlasted its
            # deliveries in a transient fault; this one is valid, so it runs. A rejected request never
            # reached the compute, so there is nothing it could repeat.
            record = self._revive(record, request, backend_name, message_id)
            if record.parent_request_id != parent_id:
                record = self._update(record, parent_request_id=parent_id)
        if not inserted and record.request is not None and record.request != request:
            log.warning(
                "request %s delivered again with a different body; the first one stands", request.request_id
            )
        claimed = self._claim(record, message_id=message_id, redelivered=delivery_count > 1)
        if claimed is None:
            return self.store.get(request.request_id) or record
        if claimed.state is RunState.received:  # over the in-flight cap: deferred, not lost
            return claimed
        return self._submit(claimed)

    def _resolve_restore(self, request: TrainingRequest) -> tuple[TrainingRequest, str | None]:
        """``restore_from: rlq://<id>``: the request with that run's final checkpoint URI (as its
        backend reported it) and the id, for lineage; any other request as it is. Refused, naming
        ``restore_from``, when that run is unknown, did not complete, has no checkpoint, or ran on
        another backend than this request would (its checkpoint lives there)."""
        parent_id = request.restore_parent
        if parent_id is None:
            return request, None

        def refused(why: str) -> InvalidRequest:
            return InvalidRequest([{"field": "restore_from", "message": f"{request.restore_from}: {why}"}])

        if parent_id == request.request_id:
            raise refused("a run cannot restore from itself")
        parent = self.store.get(parent_id)
        if parent is None:
            raise refused(f"no training request {parent_id!r}")
        if parent.completion is None or parent.completion.status != "Completed":
            raise refused(
                f"run {parent_id!r} did not complete ({parent.status or parent.state.value}); only a "
                "completed run's final checkpoint can be restored"
            )
        checkpoint = parent.completion.checkpoint_path
        if not checkpoint:
            raise refused(f"run {parent_id!r} completed without a checkpoint")
        backend = self._backend_name(request)
        if parent.backend is not None and parent.backend != backend:
            raise refused(
                f"run {parent_id!r} ran on backend {parent.backend!r}, where its checkpoint lives; this "
                f"request would run on {backend!r} (set compute.backend to {parent.backend!r})"
            )
        try:
            resolved = TrainingRequest.model_validate({**request.model_dump(), "restore_from": checkpoint})
        except ValueError as err:
            raise refused(f"the checkpoint URI of run {parent_id!r} cannot be restored: {err}") from None
        return resolved, parent_id

    def _revive(
        self, record: RunRecord, request: TrainingRequest, backend: str, message_id: str | None
    ) -> RunRecord:
        return self._update(
            record,
            state=RunState.received,
            request=request,
            backend=backend,
            message_id=message_id,
            error=None,
        )

    def _claim(
        self, record: RunRecord, *, message_id: str | None = None, redelivered: bool = False
    ) -> RunRecord | None:
        """Take the right to submit this record, or None when someone else has it / it is done.

        A claim younger than ``claim_lease_s`` (the queue's message lock) holds off other copies of
        the request. The claiming message's own redelivery takes the claim over at once: the queue
        redelivers a message only once its lock is gone, so the delivery that claimed died or lost
        its lock (and, if still alive, stops at its re-check before submitting).
        """
        lease = timedelta(seconds=self.settings.claim_lease_s)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            now = self.clock()
            if record.state is RunState.received:
                if record.cancel_requested:
                    return None
                if self._in_flight() >= self.settings.max_in_flight:
                    return self._defer(record)
            elif record.state is RunState.provisioning:
                own = redelivered and message_id is not None and message_id == record.message_id
                if record.claimed_at is not None and now - record.claimed_at < lease and not own:
                    log.info("request %s is being submitted by another delivery", record.request_id)
                    return None
                log.info(
                    "request %s: taking over a %s submission claim",
                    record.request_id,
                    "redelivered" if own else "stale",
                )
            else:
                return None  # submitted, running, terminal, rejected: nothing to do for a duplicate
            claim = {"state": RunState.provisioning, "claimed_at": now, "updated_at": now}
            if message_id is not None:
                claim["message_id"] = message_id  # the claiming message: its redelivery may take over
            try:
                return self.store.update(record.model_copy(update=claim))
            except Conflict:
                record = self._reload(record.request_id)
        raise TransientError(f"request {record.request_id}: could not claim the run record")

    def _defer(self, record: RunRecord) -> RunRecord:
        if self.sender is None or record.request is None:
            raise TransientError(f"{self.settings.max_in_flight} runs in flight; try again later")
        record = self._update(record, deferrals=record.deferrals + 1)
        at = self.clock() + timedelta(seconds=self.settings.defer_delay_s)
        self.sender.send(
            record.request.model_dump_json().encode(),
            message_id=message_ids.deferred(record.request_id, record.deferrals),
            scheduled_at=at,
        )
        log.info(
            "request %s deferred to %s: %d runs in flight (cap %d)",
            record.request_id,
            at.isoformat(timespec="seconds"),
            self._in_flight(),
            self.settings.max_in_flight,
        )
        return record

    def _submit(self, record: RunRecord) -> RunRecord:
        assert record.request is not None
        backend = self.compute[record.backend or self.settings.backend]
        try:
            pending = backend.ensure_compute(record.request)
            if pending is not None:  # a cluster is being created: the poller submits once it is up
                return self._wait_for_compute(record, pending.detail)
            self._fault("ensured")
            rechecked = self._recheck_claim(record)
            if rechecked is None or rechecked.state is not RunState.provisioning:
                return rechecked or self._reload(record.request_id)  # another delivery took it over
            record = rechecked
            run_id = backend.find(record.request_id) or backend.submit(record.request)
        except PermanentError as err:
            # The request was valid; the compute refused it for good: the run fails and says why.
            return self._terminate(record, state=RunState.failed, stop_reason="error", error=err.description)
        except BaseException:
            # Give the claim back so the redelivery of this message can try again at once; if this
            # process dies instead, the claim goes stale and the redelivery takes it over.
            self._release(record)
            raise
        self._fault("submitted")
        now = self.clock()
        try:
            record = self._update(
                record,
                state=RunState.submitted,
                run_id=run_id,
                submitted_at=now,
                progress_at=now,
                compute_pending=None,
            )
        except Exception:
            # The job exists but its run id is not recorded: release the claim too, or the redelivery
            # would find it fresh, take itself for a duplicate and complete — stranding the run.
            # The next claim's find() picks the job up.
            self._release(record)
            raise
        self._fault("recorded")
        log.info("request %s submitted to %s as %s", record.request_id, backend.name, run_id)
        return record

    def _wait_for_compute(self, record: RunRecord, detail: str) -> RunRecord:
        """The run stays ``provisioning``, unclaimed, until the poller finds the compute ready."""
        if record.compute_pending != detail:
            log.info("request %s waits for its compute: %s", record.request_id, detail)
        return self._update(record, state=RunState.provisioning, compute_pending=detail, claimed_at=None)

    def _submit_when_ready(self, record: RunRecord) -> RunOutcome | None:
        """Poller: claim a run that waits for its compute and try the submit again."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.claim_lease_s)
        if record.claimed_at is not None and now - record.claimed_at < lease:
            return None  # another poller or a redelivery is submitting it right now
        try:
            claimed = self.store.update(record.model_copy(update={"claimed_at": now, "updated_at": now}))
        except Conflict:
            return None  # someone else moved it first; the next tick sees what they did
        after = self._submit(claimed)
        return RunOutcome.entered(after.state) if after.state is not RunState.provisioning else None

    def _release(self, record: RunRecord) -> None:
        # A run waiting for its compute stays with the poller (its message is settled already).
        state = RunState.provisioning if record.compute_pending else RunState.received
        try:
            self.store.update(
                record.model_copy(update={"state": state, "claimed_at": None, "updated_at": self.clock()})
            )
        except Exception as err:  # noqa: BLE001 - the stale-claim takeover covers this
            log.warning("could not release the claim on %s: %s", record.request_id, err)

    def _recheck_claim(self, record: RunRecord) -> RunRecord | None:
        """Right before the submit call: is the claim still this delivery's? Renew it if so.

        None when another delivery took it over meanwhile (its claim time differs); a write to
        another field (a cancel, say) is not a takeover: the renewal is retried on the fresh record.
        """
        for _ in range(MAX_UPDATE_ATTEMPTS):
            now = self.clock()
            try:
                return self.store.update(record.model_copy(update={"claimed_at": now, "updated_at": now}))
            except Conflict:
                fresh = self._reload(record.request_id)
                if fresh.state is not RunState.provisioning or fresh.claimed_at != record.claimed_at:
                    log.warning(
                        "request %s: the submission claim was taken over during ensure_compute; "
                        "the other delivery submits it",
                        record.request_id,
                    )
                    return None
                record = fresh
        raise TransientError(f"request {record.request_id}: the run record kept changing under us")

    def _retry_later(self, body: Any, message_id: str | None, err: TransientError) -> RunRecord | None:
        """Schedule a re-send of a request that met a transient failure; None when it cannot be."""
        if self.sender is None:
            return None
        try:
            request = parse_request(body, default_id=message_id, max_bytes=self.settings.max_body_bytes)
        except (PermanentError, ValueError):
            return None
        attempt = message_ids.retries(message_id)
        if attempt >= self.settings.intake_retry_attempts:
            self._give_up_retrying(body, message_id, request.request_id, attempt, err)
            return self._record_or_request(request)
        s = self.settings
        delay_s = min(s.intake_retry_base_s * 2**attempt, s.intake_retry_max_delay_s)
        at = self.clock() + timedelta(seconds=delay_s)
        try:
            self.sender.send(
                request.model_dump_json().encode(),
                message_id=message_ids.retry(request.request_id, attempt + 1),
                scheduled_at=at,
            )
        except Exception as send_err:  # noqa: BLE001 - the queue redelivers this message instead
            log.warning("could not schedule a retry of %s: %s", request.request_id, send_err)
            return None
        log.warning(
            "request %s: %s; retry %d of %d at %s",
            request.request_id,
            err,
            attempt + 1,
            s.intake_retry_attempts,
            at.isoformat(timespec="seconds"),
        )
        return self._record_or_request(request)

    def _record_or_request(self, request: TrainingRequest) -> RunRecord:
        try:
            record = self.store.get(request.request_id)
        except Exception as err:  # noqa: BLE001 - the store may be what is failing; the queue holds the request
            log.warning("could not read the record of %s: %s", request.request_id, err)
            record = None
        return record or RunRecord(request_id=request.request_id, request=request)

    def _give_up_retrying(
        self, body: Any, message_id: str | None, request_id: str, attempt: int, err: TransientError
    ) -> None:
        what = f"after {attempt + 1} tries"
        self._record_give_up(body, message_id, what, err)
        if self.rejecter is not None:
            raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
            self.rejecter.reject(
                message_id=message_id or "",
                body=raw,
                reason="TransientFailure",
                description=f"{request_id}: gave up {what}; last error: {err}"[:4096],
            )

    def _record_give_up(self, body: Any, message_id: str | None, what: str, err: TransientError) -> None:
        request_id = guess_request_id(body) or message_id
        record = self.store.get(request_id) if request_id else None
        if record is None or record.state is not RunState.received:
            return  # nothing recorded (the dead letter is the whole story), or the run went on
        note = (
            f"dead-lettered {what}; last error: {err}. "
            "Resubmit it once the fault is fixed: rlq dead-letters, then rlq dead-letters --resubmit SEQ."
        )
        try:
            self._update(record, state=RunState.rejected, error=note)
        except Exception as store_err:  # noqa: BLE001 - the dead letter still holds the request
            log.warning("could not record the give-up on %s: %s", request_id, store_err)

    def _record_rejection(self, body: Any, message_id: str | None, err: PermanentError) -> RunRecord | None:
        request_id = guess_request_id(body) or message_id
        if not request_id:
            return None
        record, _inserted = self.store.insert_if_absent(
            RunRecord(
                request_id=request_id,
                state=RunState.rejected,
                message_id=message_id,
                error=err.description,
                created_at=self.clock(),
                updated_at=self.clock(),
            )
        )
        return record

    def _check_caps(self, request: TrainingRequest) -> None:
        s, c = self.settings, request.compute
        if c.workers is not None or c.head is not None:
            if c.total_nodes() > s.max_nodes_per_request:
                raise Forbidden(
                    f"compute: {c.total_nodes()} nodes requested; the cap is {s.max_nodes_per_request}"
                )
            if c.total_gpus() > s.max_gpus_per_request:
                raise Forbidden(
                    f"compute: {c.total_gpus()} GPUs requested; the cap is {s.max_gpus_per_request}"
                )
        if c.max_run_duration_s is not None and c.max_run_duration_s > s.max_run_duration_s:
            raise Forbidden(
                f"compute.max_run_duration_s: {c.max_run_duration_s} is over the cap of "
                f"{s.max_run_duration_s} s"
            )
        if request.stop.time_total_s is not None and request.stop.time_total_s > s.max_run_duration_s:
            raise Forbidden(
                f"stop.time_total_s: {request.stop.time_total_s} is over the cap of {s.max_run_duration_s} s"
            )
        if c.backend is not None and c.backend not in self.compute:
            raise Forbidden(
                f"compute.backend: {c.backend!r} is not enabled here; enabled: "
                f"{', '.join(sorted(self.compute))}"
            )
        problems = check_request_urls(
            request, local_mode=s.local_mode, allow_hosts=s.webhook_allow_hosts
        )  # static rules only: no DNS at intake; delivery resolves and pins each address
        problems += resource_problems(request, **self._own_resources(request))
        if problems:
            raise Forbidden("; ".join(f"{p['field']}: {p['message']}" for p in problems))

    def _own_resources(self, request: TrainingRequest) -> dict[str, Any]:
        """rlq's own names and the CPUs a request can get, for :func:`shared.contracts.request.resource_problems`."""
        s, c = self.settings, request.compute
        if c.head is not None or c.workers is not None:
            max_cpus = c.total_cpus()
        elif self._backend_name(request) == "azureml":
            max_cpus = VM_SIZES[s.head_vm_size].cpus + VM_SIZES[s.worker_vm_size].cpus * s.worker_node_count
        else:
            max_cpus = s.ray_num_cpus if self._backend_name(request) == "ray" else None
        return {
            "own_queues": {
                s.queue_name: "request queue",
                s.rejected_queue_name: "rejected-request queue",
                s.topic_name: "completion topic",
                s.subscription_name: "notifier subscription",
            },
            "own_clusters": {s.head_cluster: "head", s.worker_cluster: "worker"},
            "max_cpus": max_cpus,
        }

    def _backend_name(self, request: TrainingRequest) -> str:
        return request.compute.backend or self.settings.backend

    def _in_flight(self) -> int:
        return self.store.count([RunState.provisioning, RunState.submitted, RunState.running])

    # --- polling -------------------------------------------------------------------------------

    def poll_once(self) -> TickReport:
        """One timer tick: every active run polled with bounded concurrency and a time budget."""
        started = time.monotonic()
        report = TickReport()
        todo = self.store.list(
            states=[
                RunState.submitted,
                RunState.running,
                *TERMINAL,
                RunState.received,
                RunState.provisioning,
            ],
            limit=1_000_000,
        )
        todo = [r for r in todo if self._needs_poll(r)]
        if not todo:
            report.wall_s = time.monotonic() - started
            return report
        pool = self._pool()
        futures = {pool.submit(self._poll_one, r): r for r in todo}
        done, pending = wait(futures, timeout=self.settings.poll_tick_budget_s)
        for fut in pending:  # not started yet: left for the next tick (one already running finishes)
            fut.cancel()
        for fut in done:
            rec = futures[fut]
            try:
                outcome = fut.result()
            except Exception as err:  # noqa: BLE001 - one run's failure never blocks the others
                report.errors.append(f"{rec.request_id}: {type(err).__name__}: {err}")
                log.warning("poll of %s failed: %s", rec.request_id, err)
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
        size = self.settings.poll_concurrency
        with self._poll_pool_lock:
            if self._poll_pool is None or self._poll_pool_size != size:
                if self._poll_pool is not None:
                    self._poll_pool.shutdown(wait=False, cancel_futures=True)
                self._poll_pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="rlq-poll")
                self._poll_pool_size = size
            return self._poll_pool

    def _needs_poll(self, r: RunRecord) -> bool:
        if r.state in TERMINAL:
            return r.published_at is None
        if r.state is RunState.provisioning and r.compute_pending:
            return True  # waiting for a cluster: the poller submits it once the cluster is up
        if r.state in (RunState.received, RunState.provisioning):
            return r.cancel_requested  # otherwise the queue owns it until it is submitted
        return True

    def _poll_one(self, record: RunRecord) -> RunOutcome | None:
        if record.state in TERMINAL:
            return RunOutcome.published if self._publish(record) else None
        if record.state is RunState.provisioning and record.compute_pending and not record.cancel_requested:
            return self._submit_when_ready(record)
        if record.state in (RunState.received, RunState.provisioning):
            self._terminate(record, state=RunState.canceled, stop_reason="canceled")
            return RunOutcome.canceled
        backend = self.compute[record.backend or self.settings.backend]
        assert record.run_id is not None
        try:
            if record.cancel_requested:
                backend.cancel(record.run_id)
            status = backend.status(record.run_id)
        except TransientError as err:
            return self._unanswered(record, backend, err)
        except PermanentError as err:
            status = JobStatus(state="failed", error=err.description)
        return self._apply(record, backend, status)

    def _unanswered(self, record: RunRecord, backend: ComputeBackend, err: TransientError) -> RunOutcome:
        """The backend did not answer this tick. The run still ends — at its time limit, or once the
        backend has not answered for ``unreachable_timeout_s`` — instead of staying active for good."""
        now = self.clock()
        since = record.unreachable_since or now
        limit = self._watchdog_limit_s(record)
        began = record.started_at or record.submitted_at or record.created_at
        silent_s = (now - since).total_seconds()
        if (now - began).total_seconds() > limit:
            self._cancel_quietly(backend, record)
            self._terminate(
                record,
                state=RunState.timed_out,
                stop_reason="time_limit",
                error=f"run exceeded its maximum duration of {limit:.0f} s (its backend did not answer: {err})",
            )
            return RunOutcome.timed_out
        if silent_s > self.settings.unreachable_timeout_s:
            self._cancel_quietly(backend, record)
            self._terminate(
                record,
                state=RunState.failed,
                stop_reason="error",
                error=(
                    f"the compute backend did not answer for {self.settings.unreachable_timeout_s:.0f} s "
                    f"(last: {err}); the run is given up, its outcome unknown"
                ),
            )
            return RunOutcome.unreachable
        self._update(record, poll_failures=record.poll_failures + 1, unreachable_since=since)
        raise TransientError(f"status of {record.run_id}: {err} (no answer for {silent_s:.0f} s)") from err

    def _cancel_quietly(self, backend: ComputeBackend, record: RunRecord) -> None:
        try:
            backend.cancel(record.run_id or "")
        except (TransientError, PermanentError) as err:
            log.warning("could not cancel %s on giving it up: %s", record.run_id, err)

    def _apply(self, record: RunRecord, backend: ComputeBackend, st: JobStatus) -> RunOutcome | None:
        now = self.clock()
        changes: dict[str, Any] = {"poll_failures": 0}
        if record.unreachable_since is not None:
            changes["unreachable_since"] = None  # it answers again
        if st.portal_url and st.portal_url != record.portal_url:
            changes["portal_url"] = st.portal_url
        if st.error and st.state in ("pending", "running") and st.error != record.error:
            changes["error"] = st.error  # reported while the run goes on (e.g. its worker nodes died)
        if st.progress is not None and (
            record.progress is None
            or st.progress.iteration > record.progress.iteration
            or st.progress.timesteps > record.progress.timesteps
        ):
            changes.update(
                progress=st.progress, progress_at=now, curve=_append_curve(record.curve, st.progress)
            )
        outcome: RunOutcome | None = None
        if st.state == "running" and record.state is RunState.submitted:
            changes.update(
                state=RunState.running, started_at=now, progress_at=changes.get("progress_at", now)
            )
            outcome = RunOutcome.running
        summary = None
        if st.state in ("succeeded", "failed", "stopped"):
            summary = st.summary
            changes.update(self._terminal_fields(record, st))
            outcome = RunOutcome.entered(changes["state"])
        else:
            limit = self._watchdog_limit_s(record)
            began = record.started_at or record.submitted_at or record.created_at
            last = changes.get("progress_at") or record.progress_at or began
            if (now - began).total_seconds() > limit:
                backend.cancel(record.run_id or "")
                changes.update(
                    state=RunState.timed_out,
                    stop_reason="time_limit",
                    error=f"run exceeded its maximum duration of {limit:.0f} s",
                )
                outcome = RunOutcome.timed_out
            elif (
                now - last
            ).total_seconds() > self.settings.stall_timeout_s and record.state is RunState.running:
                backend.cancel(record.run_id or "")
                changes.update(
                    state=RunState.failed,
                    stop_reason="stalled",
                    error=f"no training progress for {self.settings.stall_timeout_s:.0f} s",
                )
                outcome = RunOutcome.stalled
        if changes.get("state") in TERMINAL:
            self._terminate(record, summary=summary, **changes)
            return outcome
        if len(changes) == 1 and not record.poll_failures:
            return outcome  # nothing new: no write
        self._update(record, **changes)
        return outcome

    def _terminal_fields(self, record: RunRecord, st: JobStatus) -> dict[str, Any]:
        summary = st.summary or TrainerSummary()
        stop = record.request.stop if record.request else None
        stop_reason = summary.stop_reason
        if st.state == "stopped":
            state = RunState.canceled
            stop_reason = "canceled"
        elif st.state == "failed" or summary.error:
            state, stop_reason = RunState.failed, stop_reason if stop_reason in ("stalled",) else "error"
        elif stop_reason == "canceled":
            state = RunState.canceled
        elif stop_reason == "time_limit" and stop is not None and stop.episode_reward_mean is not None:
            state = RunState.timed_out  # the budget ran out before the reward target
        else:
            state = RunState.completed
        error = summary.error or st.error
        if state is RunState.canceled and not record.cancel_requested:
            error = error or "the job was stopped outside rlq"
        return {
            "state": state,
            "stop_reason": stop_reason,
            "error": error if state is not RunState.completed else None,
        }

    def _watchdog_limit_s(self, record: RunRecord) -> float:
        """How long a run may go on before the poller cancels it as ``timed_out`` (the watchdog).

        Not the trainer's own time budget (:func:`shared.contracts.trainer.trainer_time_budget_s`,
        passed as ``--stop time_total_s``), at which a healthy trainer stops itself: the watchdog
        is the outer bound for a job that does not, with room for start-up and checkpointing.
        """
        req = record.request
        limit = self.settings.default_run_duration_s
        if req is not None:
            limit = (
                req.compute.max_run_duration_s
                or (req.stop.time_total_s and req.stop.time_total_s * 2 + 600)
                or limit
            )
        return float(min(limit, self.settings.max_run_duration_s))

    # --- completion (outbox) -------------------------------------------------------------------

    def _terminate(
        self, record: RunRecord, *, summary: TrainerSummary | None = None, **changes: Any
    ) -> RunRecord:
        """Terminal state and completion message in one write (the outbox), then publish."""
        changes.setdefault("finished_at", self.clock())
        ended = record.model_copy(update=changes)
        changes["completion"] = self._completion(ended, summary or TrainerSummary())
        stored = self._update(record, **changes)
        if stored.state not in TERMINAL or stored.completion is None:
            return stored  # someone else moved it on first
        self._fault("terminal")
        self._publish(stored)
        return self.store.get(record.request_id) or stored

    def _completion(self, record: RunRecord, summary: TrainerSummary) -> CompletionMessage:
        req = record.request
        p = record.progress
        duration = None
        if record.finished_at and (record.started_at or record.submitted_at):
            duration = (record.finished_at - (record.started_at or record.submitted_at)).total_seconds()
        return CompletionMessage(
            message_id=message_ids.completed(record.request_id),
            request_id=record.request_id,
            run_id=record.run_id,
            status=STATUS_OF[record.state],
            stop_reason=record.stop_reason,
            experiment=req.experiment if req else "rlq",
            algorithm=req.algorithm if req else None,
            env=req.env if req else None,
            final_reward=_either(summary.final_reward, p.episode_reward_mean if p else None),
            best_reward=_either(summary.best_reward, curves.best(curves.record_points(record.curve))),
            iterations=_either(summary.iterations, p.iteration if p else None),
            timesteps=_either(summary.timesteps, p.timesteps if p else None),
            duration_s=_either(summary.duration_s, duration),
            checkpoint_path=summary.checkpoint_path,
            parent_request_id=record.parent_request_id,
            eval_reward=summary.eval_reward,
            replay_path=summary.replay_path,
            reward_curve_url=f"{self.settings.public_base_url.rstrip('/')}/api/trainings/{record.request_id}/reward.png",
            error=record.error,
            portal_url=record.portal_url,
            tags=req.tags if req else {},
            finished_at=record.finished_at or self.clock(),
            simulated=summary.simulated,
        )

    def _publish(self, record: RunRecord) -> bool:
        if record.completion is None or record.published_at is not None:
            return False
        reply_to = record.request.reply_to if record.request else None
        self.publisher.publish(record.completion, reply_to=reply_to)  # TransientError: next tick retries
        self._fault("published")
        self._update(record, published_at=self.clock(), state=RunState.notified)
        log.info("request %s: completion published (%s)", record.request_id, record.completion.status)
        return True

    # --- notifier, cancel, queries -------------------------------------------------------------

    def notify(self, message: CompletionMessage) -> list[Delivery]:
        """The topic trigger's call: deliver to webhooks / Teams and record each outcome on the run."""
        record = self.store.get(message.request_id)
        if record is not None and self.artifacts is not None:
            try:  # the reward curve beside the run's outputs; a picture never blocks a notification
                self.artifacts(record)
            except Exception as err:  # noqa: BLE001 - a picture never blocks a notification
                log.warning("could not save the reward curve of %s: %s", message.request_id, err)
        if self.notifier is None:
            return []
        deliveries = self.notifier.deliver(message, record.request if record else None)
        if record is not None:
            self._update(record, deliveries=deliveries, notified_at=self.clock())
        return deliveries

    def cancel(self, request_id: str) -> RunRecord:
        record = self.get(request_id)
        if record.state in FINAL or record.cancel_requested:
            return record
        record = self._update(record, cancel_requested=True)
        if record.run_id is not None:
            backend = self.compute[record.backend or self.settings.backend]
            try:
                backend.cancel(record.run_id)
            except TransientError as err:
                log.warning("cancel of %s will be retried by the poller: %s", request_id, err)
        return record

    def readiness(self) -> Readiness:
        """The run store takes a write, the request queue and the completion topic take messages,
        each compute backend answers: each checked once, without retries, side by side and bounded
        in time; the answer is reused for a few seconds (:mod:`shared.readiness`). A check that
        fails is reported, not raised."""
        return self._readiness.readiness()

    def _readiness_deps(self) -> list[tuple[str, object]]:
        deps: list[tuple[str, object]] = [("store", self.store), ("queue", self.sender)]
        deps.append(("topic", self.publisher))
        deps += [(f"compute:{name}", backend) for name, backend in self.compute.items()]
        return deps

    def get(self, request_id: str) -> RunRecord:
        record = self.store.get(request_id)
        if record is None:
            raise NotFound(f"no training request {request_id!r}")
        return record

    def list(self, *, states: Iterable[RunState] | None = None, limit: int = 100) -> list[RunRecord]:
        return self.store.list(states=states, limit=limit)

    def enqueue(self, body: bytes | str | dict[str, Any]) -> str:
        """Validate here (so a caller sees field errors at once), then put it on the intake queue."""
        import uuid

        if self.sender is None:
            raise PermanentError("no request sender configured")
        request = parse_request(body, default_id=uuid.uuid4().hex, max_bytes=self.settings.max_body_bytes)
        self._check_caps(request)
        resolved, parent_id = self._resolve_restore(request)  # refused here too: the caller sees why
        # Recorded first: a store that cannot record the request never gets it queued, so the
        # caller's 503 is the whole story (a queued message the intake could not record would
        # dead-letter with no run record, and each retry of the caller would add another).
        record, inserted = self.store.insert_if_absent(
            RunRecord(
                request_id=request.request_id,
                request=resolved,
                parent_request_id=parent_id,
                backend=self._backend_name(resolved),
                created_at=self.clock(),
                updated_at=self.clock(),
            )
        )
        try:
            # The queue gets the request as written: intake resolves rlq:// itself, for every producer.
            self.sender.send(request.model_dump_json().encode(), message_id=request.request_id)
        except Exception as err:
            if inserted:  # not queued: the record says so (sending it again revives it)
                self._not_queued(record, err)
            raise
        return request.request_id

    def _not_queued(self, record: RunRecord, err: Exception) -> None:
        try:
            self._update(
                record,
                state=RunState.rejected,
                error=f"not queued ({err}); submit the request again",
            )
        except (TransientError, PermanentError, NotFound) as update_err:
            # the caller's answer (an error) stands; the record stays received until resubmitted
            log.warning("request %s: not queued; recording that failed: %s", record.request_id, update_err)

    # --- helpers -------------------------------------------------------------------------------

    def _update(self, record: RunRecord, **changes: Any) -> RunRecord:
        """Conditional update. On a lost race: re-read; a state change decided on the old state is
        dropped (the other writer saw newer facts), a plain field update is re-applied."""
        for _ in range(MAX_UPDATE_ATTEMPTS):
            try:
                return self.store.update(record.model_copy(update={**changes, "updated_at": self.clock()}))
            except Conflict:
                fresh = self._reload(record.request_id)
                if "state" in changes and fresh.state is not record.state:
                    return fresh
                record = fresh
        raise TransientError(f"request {record.request_id}: the run record kept changing under us")

    def _reload(self, request_id: str) -> RunRecord:
        fresh = self.store.get(request_id)
        if fresh is None:
            raise NotFound(f"no training request {request_id!r}")
        return fresh

    def _fault(self, point: str) -> None:
        if self._faults is not None:
            self._faults(point)


def guess_request_id(body: Any) -> str | None:
    """The well-formed ``request_id`` of a message body that may be invalid JSON or an invalid request."""
    import json
    import re

    from shared.contracts.request import ID_RE

    try:
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        rid = data.get("request_id") if isinstance(data, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(rid, str) and re.match(ID_RE, rid):
        return rid
    return None


def _append_curve(
    curve: list[tuple[int, int, float | None]], p: Progress
) -> list[tuple[int, int, float | None]]:
    out = [*list(curve), (p.iteration, p.timesteps, p.episode_reward_mean)]
    if len(out) > CURVE_POINTS:  # keep the first point and thin the rest evenly
        out = [out[0], *out[1::2]]
    return out


_N = TypeVar("_N", int, float)


def _either(reported: _N | None, fallback: _N | None) -> _N | None:
    """The trainer's own figure when its summary has one, else what rlq saw of the run."""
    return reported if reported is not None else fallback
