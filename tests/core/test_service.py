"""The orchestration core on real embedded parts: SQLite store and broker, the compute twin."""

from __future__ import annotations

import json

import pytest

from shared.contracts.run import RunState
from shared.errors import InvalidRequest, NotFound, PermanentError, TransientError
from shared.ports import JobStatus
from tests.support.topics import drain_topic

CARTPOLE = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}


def body(**extra) -> bytes:
    return json.dumps({**CARTPOLE, **extra}).encode()


def run_to_end(w, ticks: int = 5) -> None:
    for _ in range(ticks):
        w.service.poll_once()


def test_accept_submits_one_job_and_records_the_run_id(wired, twin):
    rec = wired.service.accept(body(request_id="r1"), message_id="m1")
    assert rec.state is RunState.submitted
    assert rec.run_id == twin.find("r1")
    assert twin.jobs_per_request() == {"r1": 1}


def test_request_id_defaults_to_the_message_id(wired, twin):
    rec = wired.service.accept(body(), message_id="msg-42")
    assert rec.request_id == "msg-42" and twin.jobs_per_request() == {"msg-42": 1}


def test_same_request_twice_starts_one_job_and_publishes_one_message(wired, twin):
    wired.service.intake(body(request_id="dup"), message_id="a")
    wired.service.intake(body(request_id="dup"), message_id="b")
    run_to_end(wired)
    wired.service.intake(body(request_id="dup"), message_id="c")  # after completion, too
    run_to_end(wired)
    assert twin.jobs_per_request() == {"dup": 1}
    assert twin.submits() == {"dup": 1}  # the duplicates never asked for a job at all
    msgs = drain_topic(wired)
    assert [m.message_id for m in msgs] == ["dup:completed"]


def test_completion_message_carries_the_trainer_summary(wired):
    wired.service.accept(body(request_id="ok", tags={"team": "rl"}, reply_to="replies"), message_id="m")
    run_to_end(wired)
    rec = wired.service.get("ok")
    assert rec.state is RunState.notified and rec.published_at is not None
    (msg,) = drain_topic(wired)
    assert msg.status == "Completed" and msg.stop_reason == "reward_reached"
    assert msg.final_reward == 150 and msg.checkpoint_path.startswith("file://")
    assert msg.run_id == rec.run_id and msg.tags == {"team": "rl"} and msg.env == "CartPole-v1"
    assert msg.reward_curve_url.endswith("/api/trainings/ok/reward.png")
    reply = wired.broker.receive("replies")
    assert len(reply) == 1 and json.loads(reply[0].body)["message_id"] == "ok:completed"


def test_invalid_request_is_rejected_once_with_the_field_named(wired, twin):
    wired.broker.send(
        wired.settings.queue_name, body(request_id="bad", algorithm="A2C"), message_id="bad-msg"
    )
    (msg,) = wired.broker.receive(wired.settings.queue_name)
    rec = wired.service.intake(msg.body, message_id=msg.message_id)
    assert rec.state is RunState.rejected and "algorithm" in rec.error
    (dead,) = wired.broker.dead_letters(wired.settings.queue_name)
    assert (
        dead.reason == "InvalidRequest" and "algorithm" in dead.description and "IMPALA" in dead.description
    )
    assert twin.jobs_per_request() == {}


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"{not json", "(body)"),
        (b"\xff\xfe", "(body)"),
        (json.dumps({"env": "Doom"}).encode(), "env"),
        (json.dumps({"env": "CartPole-v1", "surprise": 1}).encode(), "surprise"),
        (json.dumps({"env": "CartPole-v1", "config": {"num_workers": -3}}).encode(), "config"),
        (json.dumps({"env": "CartPole-v1", "stop": {"episode_reward_mean": 900}}).encode(), "(body)"),
    ],
)
def test_accept_names_the_bad_field(wired, raw, field):
    with pytest.raises(InvalidRequest) as exc:
        wired.service.accept(raw, message_id="m")
    assert field in {e["field"] for e in exc.value.errors}


def test_caps_are_enforced(wired):
    too_big = body(request_id="big", compute={"workers": {"node_count": 40, "max_nodes": 40}})
    with pytest.raises(PermanentError, match="nodes requested; the cap is 16"):
        wired.service.accept(too_big, message_id="m")


def test_over_the_in_flight_cap_is_deferred_not_rejected(wired, twin, clock):
    wired.settings.max_in_flight = 1
    wired.service.accept(body(request_id="first"), message_id="m1")
    rec = wired.service.accept(body(request_id="second"), message_id="m2")
    assert rec.state is RunState.received and rec.deferrals == 1
    assert twin.jobs_per_request() == {"first": 1}
    counts = wired.broker.counts(wired.settings.queue_name)
    assert counts["scheduled"] == 1  # the deferred copy waits for its time
    run_to_end(wired)  # first finishes: a slot frees up
    clock.advance(wired.settings.defer_delay_s)
    (again,) = wired.broker.receive(wired.settings.queue_name) or [None]
    assert again is not None and again.message_id == "second:deferred:1"
    assert wired.service.intake(again.body, message_id=again.message_id).state is RunState.submitted
    assert twin.jobs_per_request() == {"first": 1, "second": 1}


def test_crash_between_submit_and_record_does_not_start_a_second_job(wired, twin, clock):
    def crash(point):
        if point == "submitted":
            raise SystemExit("killed")

    wired.service.core.faults = crash
    with pytest.raises(SystemExit):
        wired.service.accept(body(request_id="c1"), message_id="m")
    assert wired.store.get("c1").state is RunState.provisioning and wired.store.get("c1").run_id is None
    wired.service.core.faults = None
    # A duplicate while the claim is fresh leaves it alone; the redelivery after the lock expires takes over.
    assert wired.service.accept(body(request_id="c1"), message_id="m").state is RunState.provisioning
    clock.advance(wired.settings.lock_duration_s)
    rec = wired.service.accept(body(request_id="c1"), message_id="m")
    assert rec.state is RunState.submitted and twin.jobs_per_request() == {"c1": 1}
    assert twin.submits() == {"c1": 1}  # the takeover found the job instead of submitting again


def test_outbox_republishes_until_the_publish_lands(wired, clock):
    real = wired.service.core.publisher
    calls = []

    class Flaky:
        def publish(self, message, *, reply_to=None):
            calls.append(message.message_id)
            if len(calls) < 3:
                raise TransientError("topic busy")
            real.publish(message, reply_to=reply_to)

        def publish_event(self, event):
            real.publish_event(event)

    wired.service.core.publisher = Flaky()
    wired.service.accept(body(request_id="o1"), message_id="m")
    reports = [wired.service.poll_once() for _ in range(5)]
    rec = wired.store.get("o1")
    assert rec.state is RunState.notified and rec.completion.status == "Completed"
    assert calls == ["o1:completed"] * 3
    assert sum(r.published for r in reports) == 1
    assert [m.message_id for m in drain_topic(wired)] == ["o1:completed"]


def test_cancel_stops_the_job_and_says_canceled(wired, twin):
    rec = wired.service.accept(body(request_id="x"), message_id="m")
    wired.service.cancel("x")
    assert twin.job(rec.run_id)["canceled"] == 1
    run_to_end(wired)
    (msg,) = drain_topic(wired)
    assert msg.status == "Canceled" and msg.stop_reason == "canceled"


def test_cancel_before_submit_never_starts_a_job(wired, twin):
    wired.service.enqueue(body(request_id="early"))
    wired.service.cancel("early")
    run_to_end(wired)
    (m,) = wired.broker.receive(wired.settings.queue_name)
    wired.service.intake(m.body, message_id=m.message_id)
    assert twin.jobs_per_request() == {}
    assert [x.status for x in drain_topic(wired)] == ["Canceled"]


def test_cancel_unknown_is_not_found(wired):
    with pytest.raises(NotFound):
        wired.service.cancel("nope")


def test_time_limit_cancels_the_job_and_times_out(wired, twin, clock):
    twin.polls_to_finish = 1000
    rec = wired.service.accept(body(request_id="slow", compute={"max_run_duration_s": 120}), message_id="m")
    wired.service.poll_once()
    clock.advance(121)
    wired.service.poll_once()
    assert twin.job(rec.run_id)["canceled"] == 1
    (msg,) = drain_topic(wired)
    assert msg.status == "TimedOut" and msg.stop_reason == "time_limit" and "120" in msg.error


def test_a_run_without_progress_is_stalled(wired, twin, clock):
    twin.polls_to_finish = 1000
    rec = wired.service.accept(body(request_id="stuck"), message_id="m")
    wired.service.poll_once()
    frozen = wired.store.get("stuck").progress
    twin.status = lambda run_id: JobStatus(state="running", progress=frozen)  # alive, never moving
    clock.advance(wired.settings.stall_timeout_s + 1)
    wired.service.poll_once()
    (msg,) = drain_topic(wired)
    assert msg.status == "Failed" and msg.stop_reason == "stalled"
    assert twin.job(rec.run_id)["canceled"] == 1


def test_one_failing_run_does_not_block_the_others(wired, twin):
    for i in range(6):
        wired.service.accept(body(request_id=f"r{i}"), message_id=f"m{i}")
    bad = wired.store.get("r3").run_id
    orig = twin.status

    def status(run_id):
        if run_id == bad:
            raise RuntimeError("boom")
        return orig(run_id)

    twin.status = status
    run_to_end(wired)
    states = {r.request_id: r.state for r in wired.service.list()}
    assert states.pop("r3") is RunState.submitted
    assert set(states.values()) == {RunState.notified}
    assert "boom" in wired.service.poll_once().errors[0]


def test_transient_status_errors_are_counted_then_cleared(wired, twin):
    rec = wired.service.accept(body(request_id="t"), message_id="m")
    orig = twin.status
    twin.status = lambda run_id: (_ for _ in ()).throw(TransientError("503"))
    wired.service.poll_once()
    assert wired.store.get("t").poll_failures == 1
    twin.status = orig
    run_to_end(wired)
    assert wired.store.get("t").state is RunState.notified and wired.store.get("t").run_id == rec.run_id


def test_permanent_compute_error_fails_the_run_with_a_message(wired, twin):
    def refuse(request):
        raise PermanentError("cluster head-gpu is in state Failed")

    twin.ensure_compute = refuse
    rec = wired.service.accept(body(request_id="f"), message_id="m")
    assert rec.state is RunState.notified
    (msg,) = drain_topic(wired)
    assert msg.status == "Failed" and "head-gpu" in msg.error and twin.jobs_per_request() == {}


def test_failed_job_reports_its_error(wired, twin):
    twin.outcome = "failed"
    wired.service.accept(body(request_id="boom"), message_id="m")
    run_to_end(wired)
    (msg,) = drain_topic(wired)
    assert msg.status == "Failed" and msg.stop_reason == "error" and "injected" in msg.error


def test_notify_records_deliveries_on_the_run(wired):
    wired.service.accept(body(request_id="n"), message_id="m")
    run_to_end(wired)
    (msg,) = drain_topic(wired)
    deliveries = wired.service.notify(msg)
    rec = wired.store.get("n")
    assert rec.notified_at is not None and rec.deliveries == deliveries and not rec.deliveries[0].ok


def test_enqueue_validates_first_and_sends_nothing_when_bad(wired):
    with pytest.raises(InvalidRequest):
        wired.service.enqueue({"env": "CartPole-v1", "algorithm": "A3C"})
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 0
    rid = wired.service.enqueue(json.loads(body()))
    assert wired.service.get(rid).state is RunState.received
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 1
