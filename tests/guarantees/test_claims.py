"""The submission claim and the queue's message lock: one setting, and a claim re-checked before submit.

Service Bus redelivers a message only once its lock is gone (``lockDuration``, renewed by the
Functions host while the handler runs). A second *copy* of a request (another message) must not
take over the claim of a delivery that is still submitting; the claiming message's own redelivery
must (its first delivery died or lost its lock).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.contracts.run import RunState
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CARTPOLE = {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"training_iteration": 2}}


def body(rid: str) -> bytes:
    return json.dumps({**CARTPOLE, "request_id": rid}).encode()


def die_after_claim(wired, raw: bytes, message_id: str) -> None:
    """A delivery that claims the record and dies before submitting (no clean-up: as a SIGKILL)."""

    def crash(point):
        if point == "ensured":
            raise SystemExit("killed")

    service = wired.service
    service.core.faults, release = crash, service._intake._release
    service._intake._release = lambda record: None
    try:
        service.accept(raw, message_id=message_id)
    except SystemExit:
        pass
    finally:
        service.core.faults, service._intake._release = None, release


def test_the_lease_and_the_queue_lock_come_from_the_one_value_infra_sets():
    sb = (REPO / "infra/modules/servicebus.bicep").read_text()
    main = (REPO / "infra/main.bicep").read_text()
    (default,) = re.findall(r"param requestLockSeconds int = (\d+)", sb)
    requests_queue = sb[sb.index("name: 'training-requests'") :].split("\n}\n")[0]
    assert "lockDuration: 'PT${requestLockSeconds}S'" in requests_queue
    assert "RLQ_LOCK_DURATION_S: string(serviceBus.outputs.requestLockSeconds)" in main
    s = Settings(_env_file=None, lock_duration_s=float(default))  # type: ignore[call-arg]
    assert s.claim_lease_s == s.lock_duration_s == 300.0
    # with nothing set, rlq assumes the lock infra deploys
    assert Settings(_env_file=None).lock_duration_s == float(default)  # type: ignore[call-arg]


def test_a_second_copy_does_not_take_over_a_claim_minutes_into_a_submit(wired, twin, clock):
    """ensure_compute takes four minutes (a cluster answering slowly): a copy of the request arriving
    meanwhile under the 5-minute lock leaves the claim alone, and the claimer submits once."""
    wired.settings.lock_duration_s = 300
    real_ensure = twin.ensure_compute
    seen = []

    def slow_ensure(request):
        clock.advance(240)
        if not seen:  # the copy arrives while the first delivery waits on the compute
            seen.append(wired.service.accept(body("slow"), message_id="copy", delivery_count=1).state)
        return real_ensure(request)

    twin.ensure_compute = slow_ensure
    rec = wired.service.accept(body("slow"), message_id="first")
    assert seen == [RunState.provisioning]  # the copy saw a live claim and left it
    assert rec.state is RunState.submitted and twin.jobs_per_request() == {"slow": 1} == twin.submits()


def test_the_claim_is_rechecked_right_before_the_submit_call(wired, twin, clock):
    """If the claim was taken over while ensure_compute ran (past the lease), the first delivery does
    not call submit: the one that holds the claim does."""
    lease = wired.settings.claim_lease_s
    real_ensure, real_submit, real_find = twin.ensure_compute, twin.submit, twin.find
    submits, finds = [], []

    def slow_ensure(request):
        if not submits and len(ensures) == 0:
            ensures.append(1)
            clock.advance(lease + 1)  # stale now: a copy takes the claim over and submits
            taken = wired.service.accept(body("taken"), message_id="copy")
            assert taken.state is RunState.submitted
        return real_ensure(request)

    def counting_submit(request, attempt=1):
        submits.append(request.request_id)
        return real_submit(request, attempt)

    def counting_find(request_id, attempt=1):
        finds.append(request_id)
        return real_find(request_id, attempt)

    ensures: list[int] = []
    twin.ensure_compute, twin.submit, twin.find = slow_ensure, counting_submit, counting_find
    rec = wired.service.accept(body("taken"), message_id="first")
    # the copy's lookup and submit; the first delivery stopped at its re-check, before either
    assert finds == ["taken"] and submits == ["taken"]
    assert rec.state is RunState.submitted and rec.message_id == "copy"
    assert twin.jobs_per_request() == {"taken": 1} == twin.submits()


def test_the_claim_lease_boundary(wired, twin, clock):
    """A claim holds off copies for exactly ``claim_lease_s``: a copy one second before that leaves
    it, a copy at that age takes it over."""

    die_after_claim(wired, body("edge"), "first")
    claimed = wired.store.get("edge")
    assert claimed.state is RunState.provisioning and claimed.message_id == "first"
    clock.advance(wired.settings.claim_lease_s - 1)
    assert wired.service.accept(body("edge"), message_id="copy").state is RunState.provisioning
    assert twin.jobs_per_request() == {} == twin.submits()
    clock.advance(1)
    assert wired.service.accept(body("edge"), message_id="copy").state is RunState.submitted
    assert twin.jobs_per_request() == {"edge": 1} == twin.submits()


def test_the_claiming_messages_own_redelivery_takes_over_a_fresh_claim(wired, twin, clock):
    """The queue redelivers the claiming message only after its lock is gone: the first delivery
    died (or lost its lock), so its redelivery takes over at once instead of being taken for a
    duplicate and completed — which would strand the request."""

    die_after_claim(wired, body("own"), "m-own")
    clock.advance(10)  # well inside the lease (say the claim was renewed just before the crash)
    rec = wired.service.intake(body("own"), message_id="m-own", delivery_count=2)
    assert rec.state is RunState.submitted and twin.jobs_per_request() == {"own": 1} == twin.submits()


def test_a_copy_delivered_after_the_run_finished_leaves_its_record_alone(wired, twin):
    """The record is inserted only if absent: a late copy of a finished request (a producer's retry,
    a resubmitted message) finds it and stops — no new claim, no second terminal write or publish.
    (``find`` alone would keep the job count at one: the record is what would be rewritten.)"""
    wired.service.intake(body("late"), message_id="m-1")
    for _ in range(3):
        wired.service.poll_once()
    done = wired.store.get("late")
    assert done.state is RunState.notified
    wired.service.intake(body("late"), message_id="m-2")
    for _ in range(3):
        wired.service.poll_once()
    assert wired.store.get("late") == done
    assert twin.jobs_per_request() == {"late": 1} == twin.submits()
