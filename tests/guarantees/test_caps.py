"""Guardrails: per-request caps reject with the cap named; the global in-flight cap defers, never loses."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from shared.contracts.run import RunState
from shared.errors import Forbidden
from tests.poison.conftest import feed
from tests.support.topics import drain_topic

CARTPOLE = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}


def body(request_id: str, **extra) -> bytes:
    return json.dumps({**CARTPOLE, "request_id": request_id, **extra}).encode()


@pytest.mark.parametrize(
    "setting, value, extra, named",
    [
        (
            "max_nodes_per_request",
            6,
            {"compute": {"workers": {"node_count": 6, "max_nodes": 6}}},
            "compute: 7 nodes requested; the cap is 6",
        ),
        (
            "max_gpus_per_request",
            1,
            {"compute": {"head": {"vm_size": "STANDARD_NC48ADS_A100_V4"}}},
            "compute: 2 GPUs requested; the cap is 1",
        ),
        (
            "max_run_duration_s",
            600,
            {"compute": {"max_run_duration_s": 3600}},
            "compute.max_run_duration_s: 3600 is over the cap of 600 s",
        ),
        (
            "max_run_duration_s",
            600,
            {"stop": {"time_total_s": 601}},
            "stop.time_total_s: 601 is over the cap of 600 s",
        ),
    ],
)
def test_each_per_request_cap_rejects_naming_the_cap(wired, twin, setting, value, extra, named):
    setattr(wired.settings, setting, value)
    record, completed = feed(wired, body("over", **extra), "m-over")
    (dead,) = wired.broker.dead_letters(wired.settings.queue_name)
    assert completed is False and dead.reason == "Forbidden" and dead.description == named
    assert record.state is RunState.rejected and record.error == named
    assert twin.jobs_per_request() == {} == twin.submits()
    with pytest.raises(Forbidden, match="cap"):  # the HTTP / CLI path checks the same caps before sending
        wired.service.enqueue(json.loads(body("over-again", **extra)))
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 0


def test_exactly_at_each_cap_is_accepted(wired, twin):
    s = wired.settings
    s.max_nodes_per_request, s.max_gpus_per_request, s.max_run_duration_s = 7, 2, 600
    at_caps = {
        "compute": {
            "head": {"vm_size": "STANDARD_NC48ADS_A100_V4"},
            "workers": {"node_count": 6, "max_nodes": 6},
            "max_run_duration_s": 600,
        },
        "stop": {"time_total_s": 600},
    }
    record, _ = feed(wired, body("at-caps", **at_caps), "m-at")
    assert record.state is RunState.submitted and twin.jobs_per_request() == {"at-caps": 1} == twin.submits()


def intake_all(w) -> Counter:
    """Deliver every due message on the intake queue as the host does; count the outcomes."""
    q, seen = w.settings.queue_name, Counter()
    while msgs := w.broker.receive(q):
        (m,) = msgs
        rec = w.service.intake(m.body, message_id=m.message_id, delivery_count=m.delivery_count)
        seen[rec.state.value] += 1
        w.broker.complete(m)
    return seen


def test_the_in_flight_cap_defers_and_every_request_runs_exactly_once(wired, twin, clock):
    s = wired.settings
    s.max_in_flight = 3
    ids = [f"cap-{i}" for i in range(10)]
    for rid in ids:
        wired.broker.send(s.queue_name, body(rid), message_id=f"m-{rid}")

    first = intake_all(wired)
    assert first == Counter(submitted=3, received=7)  # 3 jobs, 7 deferred: none rejected
    assert sum(twin.jobs_per_request().values()) == 3
    assert sorted(twin.submits().values()) == [1, 1, 1]  # one submit call per running request
    assert wired.broker.counts(s.queue_name) == {"active": 0, "scheduled": 7, "locked": 0, "dead_letter": 0}
    assert {r.request_id for r in wired.store.list(states=[RunState.received])} == set(ids[3:])

    rounds = 0
    while wired.store.count([RunState.notified]) < len(ids):
        rounds += 1
        assert rounds <= 20, "deferred requests never all ran"
        for _ in range(2):  # the twin's jobs finish after two status polls
            wired.service.poll_once()
            assert wired.store.count([RunState.provisioning, RunState.submitted, RunState.running]) <= 3
        clock.advance(s.defer_delay_s)  # the scheduled redeliveries come due
        intake_all(wired)

    assert twin.jobs_per_request() == {rid: 1 for rid in ids} == twin.submits()
    records = {rid: wired.store.get(rid) for rid in ids}
    assert all(r.state is RunState.notified for r in records.values())
    assert sum(r.deferrals for r in records.values()) >= 7
    messages = drain_topic(wired)
    assert sorted(m.message_id for m in messages) == sorted(f"{rid}:completed" for rid in ids)
    assert all(m.status == "Completed" for m in messages)
    counts = wired.broker.counts(s.queue_name)
    assert counts == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_a_duplicate_of_a_deferred_request_does_not_start_a_second_job(wired, twin, clock):
    s = wired.settings
    s.max_in_flight = 1
    wired.broker.send(s.queue_name, body("busy"), message_id="m-busy")
    wired.broker.send(s.queue_name, body("waiting"), message_id="m-waiting-1")
    wired.broker.send(s.queue_name, body("waiting"), message_id="m-waiting-2")  # the producer retried
    assert intake_all(wired) == Counter(submitted=1, received=2)
    for _ in range(40):
        if wired.store.count([RunState.notified]) == 2:
            break
        wired.service.poll_once()
        clock.advance(s.defer_delay_s)
        intake_all(wired)
    assert twin.jobs_per_request() == {"busy": 1, "waiting": 1} == twin.submits()
    assert sorted(m.message_id for m in drain_topic(wired)) == ["busy:completed", "waiting:completed"]
