"""Outages longer than the retry budgets: nothing is stranded, nothing runs twice.

Driven through the local Functions host (``shared.localhost.LocalHost``) on the fake clock, so the
host's own settlement runs: abandon on an exception, immediate redelivery, dead-letter at the last
delivery (``max_delivery_count``).
"""

from __future__ import annotations

import json

import pytest

from shared.contracts.run import RunState
from shared.errors import TransientError
from shared.localhost import LocalHost
from tests.support.topics import peek_topic

CARTPOLE = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}


@pytest.fixture
def host(wired, clock):
    # the hosted notifier consumes the topic's own subscription: watch the topic through a second one
    wired.broker.create_subscription(wired.settings.topic_name, "audit")
    host = LocalHost.for_wiring(wired, clock=clock.epoch)
    yield host
    host.close()


def run_poller(host, times: int = 3) -> None:
    for _ in range(times):
        host.tick_timers(now=host.next_due("poller"))


def test_a_compute_outage_backs_off_then_dead_letters_a_request_that_still_runs_once(
    wired, twin, clock, host
):
    """A transient intake failure does not spend the queue's deliveries in a second: each one schedules
    a re-send later and later (``intake_retry_base_s`` doubling up to ``intake_retry_max_delay_s``).
    Past ``intake_retry_attempts`` re-sends the request goes to the dead-letter queue with the last
    error; its record says so, with the command that resubmits it; once the outage is over the
    resubmitted dead letter runs exactly once."""
    s = wired.settings
    outage = {"calls": 0, "down": True}
    real_ensure = twin.ensure_compute

    def flaky_ensure(request):
        outage["calls"] += 1
        if outage["down"]:
            raise TransientError(f"compute control plane: HTTP 503 (call {outage['calls']})")
        return real_ensure(request)

    twin.ensure_compute = flaky_ensure
    q = s.queue_name
    wired.broker.send(q, json.dumps({**CARTPOLE, "request_id": "waits"}).encode(), message_id="m-waits")
    host.drain()
    assert outage["calls"] == 1  # one try, not max_delivery_count tries in a row
    assert wired.broker.counts(q) == {"active": 0, "scheduled": 1, "locked": 0, "dead_letter": 0}

    delays = []
    for attempt in range(1, s.intake_retry_attempts + 1):
        before = clock.epoch()
        # not due a moment before its time
        expected = min(s.intake_retry_base_s * 2 ** (attempt - 1), s.intake_retry_max_delay_s)
        clock.advance(expected - 0.5)
        assert host.drain() == 0 and outage["calls"] == attempt
        clock.advance(0.5)
        assert host.drain() == 1 and outage["calls"] == attempt + 1
        delays.append(clock.epoch() - before)
    assert delays == [
        min(s.intake_retry_base_s * 2**i, s.intake_retry_max_delay_s) for i in range(len(delays))
    ]

    (dead,) = wired.broker.dead_letters(q)
    assert dead.reason == "TransientFailure" and f"call {outage['calls']}" in dead.description
    assert wired.broker.counts(q)["scheduled"] == 0
    rec = wired.store.get("waits")
    assert rec.state is RunState.rejected and rec.claimed_at is None and rec.run_id is None
    assert "rlq dead-letters --resubmit" in rec.error and f"call {outage['calls']}" in rec.error
    assert twin.jobs_per_request() == {} == twin.submits()

    outage["down"] = False
    wired.broker.resubmit_dead_letter(q, dead.sequence_number)
    # the producer also sent it again meanwhile: still one job
    wired.broker.send(q, json.dumps({**CARTPOLE, "request_id": "waits"}).encode(), message_id="m-waits-again")
    host.drain()
    run_poller(host)
    host.drain()
    assert wired.store.get("waits").state is RunState.notified
    assert twin.jobs_per_request() == {"waits": 1} == twin.submits()
    assert [m.message_id for m in peek_topic(wired, "audit")] == ["waits:completed"]


def test_two_copies_failing_at_once_schedule_one_retry(wired, twin, clock, host):
    """Both copies of a request meet the outage: their re-sends share a message id, so the queue's
    duplicate detection keeps one."""
    down = {"on": True}
    real_ensure = twin.ensure_compute

    def flaky_ensure(request):
        if down["on"]:
            raise TransientError("compute control plane: HTTP 503")
        return real_ensure(request)

    twin.ensure_compute = flaky_ensure
    q = wired.settings.queue_name
    body = json.dumps({**CARTPOLE, "request_id": "twice"}).encode()
    wired.broker.send(q, body, message_id="copy-1")
    wired.broker.send(q, body, message_id="copy-2")
    host.drain()
    assert wired.broker.counts(q)["scheduled"] == 1
    down["on"] = False
    clock.advance(wired.settings.intake_retry_base_s)
    host.drain()
    run_poller(host)
    host.drain()
    assert twin.jobs_per_request() == {"twice": 1} == twin.submits()
    assert [m.message_id for m in peek_topic(wired, "audit")] == ["twice:completed"]


def _unreachable(twin):
    def status(run_id):
        raise TransientError("compute: connection refused")

    twin.status = status


def test_a_run_whose_backend_stays_unreachable_fails_with_a_reason_after_the_bound(wired, twin, clock, host):
    s = wired.settings
    s.unreachable_timeout_s = 600  # well inside the run's own time limit (1,200 s)
    wired.broker.send(
        s.queue_name, json.dumps({**CARTPOLE, "request_id": "lost"}).encode(), message_id="m-lost"
    )
    host.drain()
    assert wired.store.get("lost").state is RunState.submitted
    _unreachable(twin)
    first_failure, ticks = clock.epoch(), 0
    while clock.epoch() - first_failure <= s.unreachable_timeout_s:
        report = wired.service.poll_once()
        ticks += 1
        assert report.errors and "connection refused" in report.errors[0]
        assert wired.store.get("lost").state is RunState.submitted  # not given up early
        clock.advance(60)
    rec = wired.store.get("lost")
    assert rec.poll_failures == ticks and rec.unreachable_since is not None
    wired.service.poll_once()  # the first tick past the bound
    host.drain()
    rec = wired.store.get("lost")
    assert rec.state is RunState.notified and rec.completion.status == "Failed"
    assert rec.completion.stop_reason == "error"
    assert f"did not answer for {s.unreachable_timeout_s:.0f} s" in rec.completion.error
    assert "connection refused" in rec.completion.error
    assert [m.message_id for m in peek_topic(wired, "audit")] == ["lost:completed"]


def test_an_answer_resets_the_unreachable_bound(wired, twin, clock):
    s = wired.settings
    s.unreachable_timeout_s = 300
    wired.service.accept(json.dumps({**CARTPOLE, "request_id": "flaky"}).encode(), message_id="m")
    real_status = twin.status
    _unreachable(twin)
    clock.advance(s.unreachable_timeout_s - 10)
    wired.service.poll_once()
    clock.advance(5)
    wired.service.poll_once()
    twin.status = real_status
    wired.service.poll_once()  # one answer: the backend is back
    rec = wired.store.get("flaky")
    assert rec.unreachable_since is None and rec.poll_failures == 0
    _unreachable(twin)
    clock.advance(s.unreachable_timeout_s - 10)
    wired.service.poll_once()
    assert wired.store.get("flaky").state not in (RunState.failed, RunState.notified)


def test_the_time_limit_ends_a_run_even_while_its_backend_is_unreachable(wired, twin, clock):
    wired.settings.unreachable_timeout_s = 10**6
    body = {**CARTPOLE, "request_id": "limited", "compute": {"max_run_duration_s": 600}}
    wired.service.accept(json.dumps(body).encode(), message_id="m")
    _unreachable(twin)
    wired.service.poll_once()
    clock.advance(601)
    wired.service.poll_once()
    rec = wired.store.get("limited")
    assert rec.state is RunState.notified and rec.completion.status == "TimedOut"
    assert rec.completion.stop_reason == "time_limit" and "600 s" in rec.completion.error


def test_a_topic_outage_of_many_ticks_publishes_once_when_it_ends(wired, twin, clock, host):
    real = wired.service.core.publisher
    attempts = []

    class Down:
        def publish(self, message, *, reply_to=None):
            attempts.append(message.message_id)
            if len(attempts) <= 25:
                raise TransientError("topic: ServiceBusyError")
            real.publish(message, reply_to=reply_to)

        def publish_event(self, event):
            real.publish_event(event)

    wired.service.core.publisher = Down()
    wired.broker.send(
        wired.settings.queue_name,
        json.dumps({**CARTPOLE, "request_id": "outbox"}).encode(),
        message_id="m-outbox",
    )
    host.drain()
    run_poller(host, 40)
    rec = wired.store.get("outbox")
    assert rec.state is RunState.notified and len(attempts) == 26
    assert [m.message_id for m in peek_topic(wired, "audit")] == ["outbox:completed"]
    assert twin.jobs_per_request() == {"outbox": 1} == twin.submits()


def test_a_store_failure_right_after_submit_does_not_strand_the_run(wired, twin, clock, host):
    """The job exists but recording its run id failed: the redelivery must find it and record it."""
    real_update = wired.store.update
    failed = []

    def update(record):
        if record.state is RunState.submitted and not failed:
            failed.append(record.request_id)
            raise TransientError("store: HTTP 503 (the write did not happen)")
        return real_update(record)

    wired.store.update = update
    wired.broker.send(
        wired.settings.queue_name,
        json.dumps({**CARTPOLE, "request_id": "stranded"}).encode(),
        message_id="m-stranded",
    )
    host.drain()
    assert wired.broker.counts(wired.settings.queue_name)["scheduled"] == 1  # the retry, later
    clock.advance(wired.settings.intake_retry_base_s)
    host.drain()
    run_poller(host)
    host.drain()
    assert failed == ["stranded"]
    rec = wired.store.get("stranded")
    assert rec.state is RunState.notified, rec.state
    assert twin.jobs_per_request() == {"stranded": 1} == twin.submits()
    assert [m.message_id for m in peek_topic(wired, "audit")] == ["stranded:completed"]


def test_when_no_retry_can_be_scheduled_the_queue_redelivers_up_to_its_budget(wired, twin, clock, host):
    """The queue itself failing to take the re-send: the message is abandoned instead, redelivered,
    and after ``max_delivery_count`` dead-lettered by the queue with the record saying so."""
    real_ensure = twin.ensure_compute

    def down(request):
        raise TransientError("compute control plane: HTTP 503")

    class NoSend:
        def send(self, body, *, message_id, scheduled_at=None):
            raise TransientError("queue: ServiceBusyError")

    twin.ensure_compute, wired.service.core.sender = down, NoSend()
    q = wired.settings.queue_name
    wired.broker.send(q, json.dumps({**CARTPOLE, "request_id": "stuck"}).encode(), message_id="m-stuck")
    host.drain()
    (dead,) = wired.broker.dead_letters(q)
    assert (
        dead.reason == "MaxDeliveryCountExceeded" and dead.delivery_count == wired.settings.max_delivery_count
    )
    rec = wired.store.get("stuck")
    assert rec.state is RunState.rejected and "after 10 deliveries" in rec.error
    twin.ensure_compute = real_ensure
    assert twin.jobs_per_request() == {} == twin.submits()
