"""Outages longer than the retry budgets: nothing is stranded, nothing runs twice.

Driven through the local Functions host (``shared.localhost.LocalHost``) on the fake clock, so the
host's own settlement runs: abandon on an exception, immediate redelivery, dead-letter at the last
delivery (``max_delivery_count``).
"""

from __future__ import annotations

import json

import pytest

from shared.errors import TransientError
from shared.localhost import LocalHost
from shared.models import CompletionMessage, RunState

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


def topic_messages(w) -> list[CompletionMessage]:
    return [
        CompletionMessage.model_validate_json(m.body)
        for m in w.broker.peek(w.settings.topic_name, subscription="audit", limit=1000)
    ]


def run_poller(host, times: int = 3) -> None:
    for _ in range(times):
        host.tick_timers(now=host.next_due("poller"))


def test_a_compute_outage_past_the_last_delivery_leaves_a_dead_letter_that_still_runs_once(
    wired, twin, clock, host
):
    """Past ``max_delivery_count`` the queue dead-letters the message with the last error. The
    request is not stranded half-claimed: its record says it was dead-lettered and why, with no job,
    and once the outage is over, resubmitting the dead letter runs it exactly once."""
    outage = {"calls": 0, "down": True}
    real_ensure = twin.ensure_compute

    def flaky_ensure(request):
        outage["calls"] += 1
        if outage["down"]:
            raise TransientError(f"compute control plane: HTTP 503 (call {outage['calls']})")
        return real_ensure(request)

    twin.ensure_compute = flaky_ensure
    q = wired.settings.queue_name
    wired.broker.send(q, json.dumps({**CARTPOLE, "request_id": "waits"}).encode(), message_id="m-waits")
    host.drain()

    (dead,) = wired.broker.dead_letters(q)
    assert outage["calls"] == wired.settings.max_delivery_count
    assert dead.reason == "MaxDeliveryCountExceeded" and f"call {outage['calls']}" in dead.description
    rec = wired.store.get("waits")
    assert rec.state is RunState.rejected and rec.claimed_at is None and rec.run_id is None
    assert "dead-lettered after" in rec.error and f"call {outage['calls']}" in rec.error
    assert twin.jobs_per_request() == {}

    outage["down"] = False
    wired.broker.resubmit_dead_letter(q, dead.sequence_number)
    # the producer also sent it again meanwhile: still one job
    wired.broker.send(q, json.dumps({**CARTPOLE, "request_id": "waits"}).encode(), message_id="m-waits-again")
    host.drain()
    run_poller(host)
    host.drain()
    assert wired.store.get("waits").state is RunState.notified
    assert twin.jobs_per_request() == {"waits": 1}
    assert [m.message_id for m in topic_messages(wired)] == ["waits:completed"]


def test_a_topic_outage_of_many_ticks_publishes_once_when_it_ends(wired, twin, clock, host):
    real = wired.service.publisher
    attempts = []

    class Down:
        def publish(self, message, *, reply_to=None):
            attempts.append(message.message_id)
            if len(attempts) <= 25:
                raise TransientError("topic: ServiceBusyError")
            real.publish(message, reply_to=reply_to)

    wired.service.publisher = Down()
    wired.broker.send(
        wired.settings.queue_name,
        json.dumps({**CARTPOLE, "request_id": "outbox"}).encode(),
        message_id="m-outbox",
    )
    host.drain()
    run_poller(host, 40)
    rec = wired.store.get("outbox")
    assert rec.state is RunState.notified and len(attempts) == 26
    assert [m.message_id for m in topic_messages(wired)] == ["outbox:completed"]
    assert twin.jobs_per_request() == {"outbox": 1}


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
    run_poller(host)
    host.drain()
    assert failed == ["stranded"]
    rec = wired.store.get("stranded")
    assert rec.state is RunState.notified, rec.state
    assert twin.jobs_per_request() == {"stranded": 1}
    assert [m.message_id for m in topic_messages(wired)] == ["stranded:completed"]
