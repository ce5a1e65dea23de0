"""One request end to end through function_app.py's handlers (compute twin, SQLite broker and
store), read back from the SDK's in-memory exporters: one trace, its parent links across both
queue hops, the metric points and the log records' request ids."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.trace import SpanKind, StatusCode

import function_app
from shared import telemetry
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.composition import install
from shared.localhost.bindings import list_functions, to_function_message

FUNCTIONS = {fn.get_function_name(): fn.get_user_function() for fn in list_functions(function_app.app)}
BODY = {"request_id": "otel-1", "env": "CartPole-v1", "stop": {"episode_reward_mean": 150}}


@pytest.fixture
def twin(tmp_path) -> ComputeTwin:  # three polls: running, a quiet one (more iterations), succeeded
    return ComputeTwin(tmp_path / "twin.sqlite3", polls_to_finish=3)


@pytest.fixture(autouse=True)
def installed(wired):
    install(wired)
    yield wired
    install(None)


def deliver(wired, entity: str, handler: str, subscription: str | None = None) -> None:
    """Receive what is there as the local host does and hand each message to the trigger's function
    (the topic may also hold other events, which the notifier passes over)."""
    batch = wired.broker.receive(entity, subscription=subscription, max_messages=10)
    assert batch
    for rm in batch:
        FUNCTIONS[handler](to_function_message(rm))
        wired.broker.complete(rm)


def run_one(wired) -> tuple[str, list]:
    request_id = wired.service.enqueue(json.dumps(BODY).encode())
    deliver(wired, wired.settings.queue_name, "intake")
    reports = [wired.service.poll_once() for _ in range(4)]
    deliver(wired, wired.settings.topic_name, "notifier", wired.settings.subscription_name)
    return request_id, reports


def test_one_request_is_one_trace_across_both_queue_hops(wired, sdk, caplog):
    caplog.set_level(logging.INFO, logger="shared")
    request_id, reports = run_one(wired)
    spans = sdk.finished()
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert sorted(by_name) == sorted(
        [
            telemetry.ENQUEUE,
            telemetry.INTAKE,
            telemetry.ENSURE_COMPUTE,
            telemetry.SUBMIT,
            telemetry.POLL,
            telemetry.PUBLISH,
            telemetry.NOTIFY,
            telemetry.DELIVERY,
        ]
    )
    # one trace, every rlq span of it naming the request (the delivery's carries its outcome)
    assert {s.context.trace_id for s in spans} == {by_name[telemetry.ENQUEUE][0].context.trace_id}
    assert all(
        s.attributes[telemetry.REQUEST_ID] == request_id for s in spans if s.name != telemetry.DELIVERY
    )

    (enqueue,) = by_name[telemetry.ENQUEUE]
    (intake,) = by_name[telemetry.INTAKE]
    (ensure,) = by_name[telemetry.ENSURE_COMPUTE]
    (submit,) = by_name[telemetry.SUBMIT]
    (publish,) = by_name[telemetry.PUBLISH]
    (notify,) = by_name[telemetry.NOTIFY]
    (delivery,) = by_name[telemetry.DELIVERY]
    # the queue hop: the intake continues the trace the message's application properties carried
    assert (enqueue.kind, intake.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert intake.parent.span_id == enqueue.context.span_id and intake.parent.is_remote
    assert ensure.parent.span_id == intake.context.span_id
    assert submit.parent.span_id == intake.context.span_id
    assert intake.attributes[telemetry.STATE] == "submitted"

    # later ticks join the trace from the context kept on the run record: only polls that changed it
    polls = sorted(by_name[telemetry.POLL], key=lambda s: s.start_time)
    changed = sum(sum(r.transitions.values()) for r in reports)
    assert sum(r.polled for r in reports) == 3 and changed == 2
    assert [s.attributes[telemetry.OUTCOME] for s in polls] == ["running", "completed"]
    assert all(s.parent.span_id == intake.context.span_id for s in polls)
    assert wired.store.get(request_id).trace_context["traceparent"].split("-")[2] == format(
        intake.context.span_id, "016x"
    )

    # the topic hop: publish inside the poll that ended the run, the notifier continues it
    assert publish.parent.span_id == polls[-1].context.span_id and publish.kind is SpanKind.PRODUCER
    assert notify.parent.span_id == publish.context.span_id and notify.parent.is_remote
    assert delivery.parent.span_id == notify.context.span_id
    assert delivery.attributes[telemetry.OUTCOME] == "failed"
    assert delivery.attributes["http.response.status_code"] == 500
    assert delivery.attributes["server.address"] == "hooks.example.com"
    assert delivery.status.status_code is StatusCode.ERROR

    # log records carry the request id (and the run id once there is one)
    submitted = [r for r in caplog.records if "submitted to" in r.getMessage()]
    assert [(r.request_id, r.run_id) for r in submitted] == [(request_id, None)]
    published = [r for r in caplog.records if "completion published" in r.getMessage()]
    assert [r.request_id for r in published] == [request_id]
    assert published[0].run_id == wired.store.get(request_id).run_id


def total(points, name, **attributes) -> float:
    return sum(
        getattr(p, "sum", None) if hasattr(p, "bucket_counts") else p.value
        for a, p in points.get(name, [])
        if all(a.get(k) == v for k, v in attributes.items())
    )


def count(points, name, **attributes) -> int:
    return sum(p.count for a, p in points.get(name, []) if all(a.get(k) == v for k, v in attributes.items()))


def test_one_run_records_its_metric_points(wired, sdk, clock):
    run_one(wired)
    points = sdk.points()
    assert total(points, "rlq.requests.accepted", **{telemetry.VIA: "api"}) == 1
    assert total(points, "rlq.requests.accepted", **{telemetry.VIA: "queue"}) == 0  # recorded once
    assert "rlq.requests.refused" not in points and "rlq.dead_letters" not in points
    assert count(points, "rlq.queue.wait") == 1
    assert count(points, "rlq.run.first_iteration") == 1
    assert count(points, "rlq.run.duration", **{telemetry.STATE: "completed"}) == 1
    assert total(points, "rlq.deliveries", **{telemetry.OUTCOME: "failed"}) == 1
    assert count(points, "rlq.poll.tick") == 4
    runs = {a[telemetry.STATE]: p.value for a, p in points["rlq.runs"]}
    assert runs["notified"] == 1 and runs["running"] == 0


def test_refusals_and_dead_letters_are_counted_by_reason(wired, sdk):
    from shared.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        wired.service.enqueue(b'{"env": "CartPole-v1", "algorithm": "NOPE"}')
    wired.broker.send(wired.settings.queue_name, b"not json", message_id="bad-1")
    deliver(wired, wired.settings.queue_name, "intake")
    points = sdk.points()
    assert (
        total(points, "rlq.requests.refused", **{telemetry.VIA: "api", telemetry.REASON: "InvalidRequest"})
        == 1
    )
    assert (
        total(points, "rlq.requests.refused", **{telemetry.VIA: "queue", telemetry.REASON: "InvalidRequest"})
        == 1
    )
    assert total(points, "rlq.dead_letters", **{telemetry.REASON: "InvalidRequest"}) == 1
    assert "rlq.requests.accepted" not in points
    (intake,) = [s for s in sdk.finished() if s.name == telemetry.INTAKE]
    assert intake.parent is None  # a producer that carried no trace context: the intake starts one
    assert intake.attributes[telemetry.STATE] == "rejected"
