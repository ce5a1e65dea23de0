"""A request's way in: accept it, claim and submit it, defer it, retry it later, or give it up.

Delivery is at-least-once, so every step here is written so that running it twice, or dying
between any two lines, never yields two jobs and never loses a request:

* the run record is inserted if absent on ``request_id`` before anything else happens;
* one delivery *claims* the record (a conditional update ``received → provisioning``); a duplicate
  arriving while the claim is fresh leaves the work to the claimer, whose own message is
  redelivered by the queue if it dies; a stale claim is taken over;
* backends find a job already submitted for a request (deterministic name / tag) before submitting.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import timedelta
from typing import Any

from shared import telemetry
from shared.contracts import message_ids
from shared.contracts.parsing import parse_request
from shared.contracts.request import ID_RE, TrainingRequest
from shared.contracts.run import RunOutcome, RunRecord, RunState
from shared.core.admission import Admission
from shared.core.context import Core
from shared.core.outbox import Outbox
from shared.core.records import MAX_UPDATE_ATTEMPTS, Records
from shared.errors import Conflict, NotFound, PermanentError, TransientError

log = logging.getLogger(__name__)

# Any: a message body as the queue hands it over (bytes, text, or JSON already parsed), not yet valid
Body = bytes | str | dict[str, Any]


class Intake:
    def __init__(self, core: Core, records: Records, admission: Admission, outbox: Outbox) -> None:
        self.core = core
        self.records = records
        self.admission = admission
        self.outbox = outbox

    # --- the queue trigger -----------------------------------------------------------------------

    def intake(self, body: Body, *, message_id: str | None, delivery_count: int = 1) -> RunRecord | None:
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
            if delivery_count >= self.core.settings.max_delivery_count:
                self._record_give_up(body, message_id, f"after {delivery_count} deliveries", err)
            raise
        except PermanentError as err:
            log.warning("rejected message %s: %s: %s", message_id, err.reason, err.description)
            telemetry.REQUESTS_REFUSED.add(1, {telemetry.VIA: "queue", telemetry.REASON: err.reason})
            record = self._record_rejection(body, message_id, err)
            self._dead_letter(body, message_id, reason=err.reason, description=err.description)
            return record

    def accept(self, body: Body, *, message_id: str | None, delivery_count: int = 1) -> RunRecord:
        """Validate, record (idempotent on request_id), ensure compute, submit, record the run id."""
        request = parse_request(body, default_id=message_id, max_bytes=self.core.settings.max_body_bytes)
        self.admission.check_caps(request)
        request, parent_id = self.admission.resolve_restore(request)
        self.core.fault("validated")
        backend_name = self.admission.backend_name(request)
        now = self.core.clock()
        record, inserted = self.core.store.insert_if_absent(
            RunRecord(
                request_id=request.request_id,
                request=request,
                backend=backend_name,
                message_id=message_id,
                parent_request_id=parent_id,
                created_at=now,
                updated_at=now,
            )
        )
        self.core.fault("inserted")
        if inserted:
            telemetry.REQUESTS_ACCEPTED.add(1, {telemetry.VIA: "queue"})
        if not inserted and record.state is RunState.rejected:
            # An earlier delivery under this id could not be read, was over a cap, or outlasted its
            # deliveries in a transient fault; this one is valid, so it runs. A rejected request never
            # reached the compute, so there is nothing it could repeat.
            record = self.records.update(
                record,
                state=RunState.received,
                request=request,
                backend=backend_name,
                message_id=message_id,
                error=None,
            )
            if record.parent_request_id != parent_id:
                record = self.records.update(record, parent_request_id=parent_id)
        if not inserted and record.request is not None and record.request != request:
            log.warning(
                "request %s delivered again with a different body; the first one stands", request.request_id
            )
        claimed = self._claim(record, message_id=message_id, redelivered=delivery_count > 1)
        if claimed is None:
            return self.core.store.get(request.request_id) or record
        if claimed.state is RunState.received:  # over the in-flight cap: deferred, not lost
            return claimed
        return self._submit(claimed)

    # --- POST /api/trainings and the CLI -----------------------------------------------------------

    def enqueue(self, body: Body) -> str:
        """Validate here (so a caller sees field errors at once), then put it on the intake queue."""
        sender = self.core.sender
        if sender is None:
            raise PermanentError("no request sender configured")
        request = parse_request(
            body, default_id=uuid.uuid4().hex, max_bytes=self.core.settings.max_body_bytes
        )
        self.admission.check_caps(request)
        resolved, parent_id = self.admission.resolve_restore(request)  # refused here too: the caller sees why
        # Recorded first: a store that cannot record the request never gets it queued, so the
        # caller's 503 is the whole story (a queued message the intake could not record would
        # dead-letter with no run record, and each retry of the caller would add another).
        now = self.core.clock()
        record, inserted = self.core.store.insert_if_absent(
            RunRecord(
                request_id=request.request_id,
                request=resolved,
                parent_request_id=parent_id,
                backend=self.admission.backend_name(resolved),
                created_at=now,
                updated_at=now,
            )
        )
        try:
            # The queue gets the request as written: intake resolves rlq:// itself, for every producer.
            sender.send(request.model_dump_json().encode(), message_id=request.request_id)
        except Exception as err:
            if inserted:  # not queued: the record says so (sending it again revives it)
                self._not_queued(record, err)
            raise
        if inserted:
            telemetry.REQUESTS_ACCEPTED.add(1, {telemetry.VIA: "api"})
        return request.request_id

    def _not_queued(self, record: RunRecord, err: Exception) -> None:
        try:
            self.records.update(
                record,
                state=RunState.rejected,
                error=f"not queued ({err}); submit the request again",
            )
        except (TransientError, PermanentError, NotFound) as update_err:
            # the caller's answer (an error) stands; the record stays received until resubmitted
            log.warning("request %s: not queued; recording that failed: %s", record.request_id, update_err)

    # --- claim and submit --------------------------------------------------------------------------

    def _claim(
        self, record: RunRecord, *, message_id: str | None = None, redelivered: bool = False
    ) -> RunRecord | None:
        """Take the right to submit this record, or None when someone else has it / it is done.

        A claim younger than ``claim_lease_s`` (the queue's message lock) holds off other copies of
        the request. The claiming message's own redelivery takes the claim over at once: the queue
        redelivers a message only once its lock is gone, so the delivery that claimed died or lost
        its lock (and, if still alive, stops at its re-check before submitting).
        """
        lease = timedelta(seconds=self.core.settings.claim_lease_s)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            now = self.core.clock()
            if record.state is RunState.received:
                if record.cancel_requested:
                    return None
                if (reason := self.admission.wait_reason(record)) is not None:
                    return self._defer(record, reason)  # over a cap or behind others in line
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
            claim: dict[str, Any] = {
                "state": RunState.provisioning,
                "claimed_at": now,
                "updated_at": now,
                "waiting": None,
            }
            if message_id is not None:
                claim["message_id"] = message_id  # the claiming message: its redelivery may take over
            claim["trace_context"] = telemetry.inject() or record.trace_context  # later polls join it
            try:
                claimed = self.core.store.update(record.model_copy(update=claim))
            except Conflict:
                record = self.records.load(record.request_id)
                continue
            if record.state is RunState.received and (reason := self.admission.over_cap(claimed)):
                return self._defer(claimed, reason, release=True)  # another took the last slot at once
            return claimed
        raise TransientError(f"request {record.request_id}: could not claim the run record")

    def _defer(self, record: RunRecord, reason: str, *, release: bool = False) -> RunRecord:
        """Put the request off: ``waiting`` says why, and it is sent again after ``defer_delay_s``.
        ``release``: the claim it just took goes back in the same write."""
        sender, settings = self.core.sender, self.core.settings
        if sender is None or record.request is None:
            raise TransientError(f"{reason}; try again later")
        back = {"claimed_at": None} if release else {}
        record = self.records.update(
            record, state=RunState.received, deferrals=record.deferrals + 1, waiting=reason, **back
        )
        if record.state is not RunState.received:
            return record  # another delivery moved it on meanwhile: that one carries it
        assert record.request is not None  # the update kept it
        at = self.core.clock() + timedelta(seconds=settings.defer_delay_s)
        sender.send(
            record.request.model_dump_json().encode(),
            message_id=message_ids.deferred(record.request_id, record.deferrals),
            scheduled_at=at,
        )
        log.info("request %s deferred to %s: %s", record.request_id, at.isoformat(timespec="seconds"), reason)
        return record

    def _submit(self, record: RunRecord) -> RunRecord:
        request = record.request
        assert request is not None  # a claimed record holds its request
        backend = self.core.backend(record)
        try:
            with telemetry.span(telemetry.ENSURE_COMPUTE, request_id=record.request_id):
                pending = backend.ensure_compute(request)
            if pending is not None:  # a cluster is being created: the poller submits once it is up
                return self._wait_for_compute(record, pending.detail)
            self.core.fault("ensured")
            rechecked = self._recheck_claim(record)
            if rechecked is None or rechecked.state is not RunState.provisioning:
                return rechecked or self.records.load(record.request_id)  # another delivery took it over
            record = rechecked
            attempt = record.attempt  # one deterministic job name per attempt: never two jobs for one
            with telemetry.span(
                telemetry.SUBMIT, request_id=record.request_id, attributes={"rlq.attempt": attempt}
            ):
                run_id = backend.find(record.request_id, attempt) or backend.submit(request, attempt)
        except PermanentError as err:
            # The request was valid; the compute refused it for good: the run fails and says why.
            return self.outbox.terminate(
                record, state=RunState.failed, stop_reason="error", error=err.description
            )
        except BaseException:
            # Give the claim back so the redelivery of this message can try again at once; if this
            # process dies instead, the claim goes stale and the redelivery takes it over.
            self._release(record)
            raise
        self.core.fault("submitted")
        now = self.core.clock()
        try:
            record = self.records.update(
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
        self.core.fault("recorded")
        if not record.attempts:  # a resumed attempt's wait is not the queue's
            telemetry.QUEUE_WAIT.record(telemetry.seconds_between(record.created_at, now) or 0.0)
        log.info("request %s submitted to %s as %s", record.request_id, backend.name, run_id)
        return record

    def _wait_for_compute(self, record: RunRecord, detail: str) -> RunRecord:
        """The run stays ``provisioning``, unclaimed, until the poller finds the compute ready."""
        if record.compute_pending != detail:
            log.info("request %s waits for its compute: %s", record.request_id, detail)
        return self.records.update(
            record, state=RunState.provisioning, compute_pending=detail, claimed_at=None
        )

    def submit_when_ready(self, record: RunRecord) -> RunOutcome | None:
        """The poller's call: claim a run that waits for its compute and try the submit again."""
        now = self.core.clock()
        lease = timedelta(seconds=self.core.settings.claim_lease_s)
        if record.claimed_at is not None and now - record.claimed_at < lease:
            return None  # another poller or a redelivery is submitting it right now
        try:
            claimed = self.core.store.update(record.model_copy(update={"claimed_at": now, "updated_at": now}))
        except Conflict:
            return None  # someone else moved it first; the next tick sees what they did
        after = self._submit(claimed)
        return RunOutcome.entered(after.state) if after.state is not RunState.provisioning else None

    def _release(self, record: RunRecord) -> None:
        # A run waiting for its compute stays with the poller (its message is settled already).
        state = RunState.provisioning if record.compute_pending else RunState.received
        try:
            self.core.store.update(
                record.model_copy(
                    update={"state": state, "claimed_at": None, "updated_at": self.core.clock()}
                )
            )
        except Exception as err:  # noqa: BLE001 - the stale-claim takeover covers this
            log.warning("could not release the claim on %s: %s", record.request_id, err)

    def _recheck_claim(self, record: RunRecord) -> RunRecord | None:
        """Right before the submit call: is the claim still this delivery's? Renew it if so.

        None when another delivery took it over meanwhile (its claim time differs); a write to
        another field (a cancel, say) is not a takeover: the renewal is retried on the fresh record.
        """
        for _ in range(MAX_UPDATE_ATTEMPTS):
            now = self.core.clock()
            try:
                return self.core.store.update(
                    record.model_copy(update={"claimed_at": now, "updated_at": now})
                )
            except Conflict:
                fresh = self.records.load(record.request_id)
                if fresh.state is not RunState.provisioning or fresh.claimed_at != record.claimed_at:
                    log.warning(
                        "request %s: the submission claim was taken over during ensure_compute; "
                        "the other delivery submits it",
                        record.request_id,
                    )
                    return None
                record = fresh
        raise TransientError(f"request {record.request_id}: the run record kept changing under us")

    # --- retry later, give up, reject --------------------------------------------------------------

    def _retry_later(self, body: Body, message_id: str | None, err: TransientError) -> RunRecord | None:
        """Schedule a re-send of a request that met a transient failure; None when it cannot be."""
        sender, settings = self.core.sender, self.core.settings
        if sender is None:
            return None
        try:
            request = parse_request(body, default_id=message_id, max_bytes=settings.max_body_bytes)
        except (PermanentError, ValueError):
            return None
        attempt = message_ids.retries(message_id)
        if attempt >= settings.intake_retry_attempts:
            what = f"after {attempt + 1} tries"
            self._record_give_up(body, message_id, what, err)
            self._dead_letter(
                body,
                message_id,
                reason="TransientFailure",
                description=f"{request.request_id}: gave up {what}; last error: {err}",
            )
            return self._record_or_request(request)
        delay_s = min(settings.intake_retry_base_s * 2**attempt, settings.intake_retry_max_delay_s)
        at = self.core.clock() + timedelta(seconds=delay_s)
        try:
            sender.send(
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
            settings.intake_retry_attempts,
            at.isoformat(timespec="seconds"),
        )
        return self._record_or_request(request)

    def _record_or_request(self, request: TrainingRequest) -> RunRecord:
        try:
            record = self.core.store.get(request.request_id)
        except Exception as err:  # noqa: BLE001 - the store may be what is failing; the queue holds the request
            log.warning("could not read the record of %s: %s", request.request_id, err)
            record = None
        return record or RunRecord(request_id=request.request_id, request=request)

    def _dead_letter(self, body: Body, message_id: str | None, *, reason: str, description: str) -> None:
        """The message goes to the rejected-request queue (the dead-letter queue), as it came."""
        telemetry.DEAD_LETTERS.add(1, {telemetry.REASON: reason})
        if self.core.rejecter is not None:
            raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
            self.core.rejecter.reject(
                message_id=message_id or "", body=raw, reason=reason, description=description[:4096]
            )

    def _record_give_up(self, body: Body, message_id: str | None, what: str, err: TransientError) -> None:
        request_id = guess_request_id(body) or message_id
        record = self.core.store.get(request_id) if request_id else None
        if record is None or record.state is not RunState.received:
            return  # nothing recorded (the dead letter is the whole story), or the run went on
        note = (
            f"dead-lettered {what}; last error: {err}. "
            "Resubmit it once the fault is fixed: rlq dead-letters, then rlq dead-letters --resubmit SEQ."
        )
        try:
            self.records.update(record, state=RunState.rejected, error=note)
        except Exception as store_err:  # noqa: BLE001 - the dead letter still holds the request
            log.warning("could not record the give-up on %s: %s", request_id, store_err)

    def _record_rejection(self, body: Body, message_id: str | None, err: PermanentError) -> RunRecord | None:
        request_id = guess_request_id(body) or message_id
        if not request_id:
            return None
        now = self.core.clock()
        record, _inserted = self.core.store.insert_if_absent(
            RunRecord(
                request_id=request_id,
                state=RunState.rejected,
                message_id=message_id,
                error=err.description,
                created_at=now,
                updated_at=now,
            )
        )
        return record


def guess_request_id(body: object) -> str | None:
    """The well-formed ``request_id`` of a message body that may be invalid JSON or an invalid request."""
    try:
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        rid = data.get("request_id") if isinstance(data, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(rid, str) and re.match(ID_RE, rid):
        return rid
    return None
