"""``restore_from: rlq://<request_id>``: resolved at intake to that run's final checkpoint, with
lineage on the run record and the completion message; refused, naming ``restore_from``, otherwise.
On real embedded parts: SQLite store and broker, the compute twin."""

from __future__ import annotations

import json
import logging

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.composition import build
from shared.contracts.completion import CompletionMessage
from shared.contracts.request import TrainingRequest
from shared.contracts.run import RunRecord, RunState
from shared.errors import InvalidRequest
from tests.support.topics import drain_topic

CARTPOLE = {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"training_iteration": 2}}


def body(**extra) -> bytes:
    return json.dumps({**CARTPOLE, **extra}).encode()


def run_to_end(w, ticks: int = 5) -> None:
    for _ in range(ticks):
        w.service.poll_once()


def completed_parent(w, rid: str = "parent") -> RunRecord:
    w.service.accept(body(request_id=rid), message_id=rid)
    run_to_end(w)
    rec = w.service.get(rid)
    assert rec.completion is not None and rec.completion.status == "Completed"
    return rec


def rejected_at_intake(w, child: bytes) -> str:
    """Send ``child`` through the queue as a producer would; the dead letter's description."""
    w.broker.send(w.settings.queue_name, child, message_id="child-msg")
    (msg,) = w.broker.receive(w.settings.queue_name)
    rec = w.service.intake(msg.body, message_id=msg.message_id)
    assert rec is not None and rec.state is RunState.rejected
    (dead,) = w.broker.dead_letters(w.settings.queue_name)
    assert dead.reason == "InvalidRequest" and dead.description == rec.error
    return dead.description


def test_a_child_restores_the_parents_final_checkpoint_and_carries_its_id(wired, twin):
    parent = completed_parent(wired)
    drain_topic(wired)  # the parent's own completion

    rec = wired.service.accept(body(request_id="child", restore_from="rlq://parent"), message_id="c")

    assert rec.state is RunState.submitted and rec.parent_request_id == "parent"
    assert rec.request.restore_from == parent.completion.checkpoint_path
    assert rec.request.restore_from.startswith("file:///twin/")
    assert twin.jobs_per_request() == {"parent": 1, "child": 1}
    run_to_end(wired)
    (msg,) = drain_topic(wired)
    assert msg.request_id == "child" and msg.parent_request_id == "parent"
    assert wired.service.get("child").completion.parent_request_id == "parent"
    assert wired.service.get("parent").parent_request_id is None


def test_the_same_child_delivered_twice_runs_once_with_the_same_resolved_request(wired, twin, caplog):
    completed_parent(wired)
    child = body(request_id="child", restore_from="rlq://parent")
    with caplog.at_level(logging.WARNING, logger="shared.core.intake"):
        wired.service.intake(child, message_id="a")
        wired.service.intake(child, message_id="b")
    assert twin.jobs_per_request()["child"] == 1
    assert "different body" not in caplog.text


def test_enqueue_resolves_and_records_the_lineage_but_queues_the_request_as_written(wired):
    parent = completed_parent(wired)

    rid = wired.service.enqueue({**CARTPOLE, "request_id": "child", "restore_from": "rlq://parent"})

    stored = wired.service.get(rid)
    assert stored.parent_request_id == "parent"
    assert stored.request.restore_from == parent.completion.checkpoint_path
    (queued,) = wired.broker.peek(wired.settings.queue_name)
    assert json.loads(queued.body)["restore_from"] == "rlq://parent"
    rec = wired.service.intake(queued.body, message_id=queued.message_id)  # intake resolves it again
    assert rec.state is RunState.submitted and rec.request == stored.request


def test_an_unknown_run_is_refused_at_enqueue_naming_restore_from_and_nothing_is_sent(wired):
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue({**CARTPOLE, "restore_from": "rlq://nobody"})

    assert err.value.errors == [
        {"field": "restore_from", "message": "rlq://nobody: no training request 'nobody'"}
    ]
    assert wired.broker.peek(wired.settings.queue_name) == []


def test_a_run_that_is_still_running_is_refused_at_intake(wired, twin):
    wired.service.accept(body(request_id="parent"), message_id="p")
    wired.service.poll_once()
    assert wired.service.get("parent").state is RunState.running

    why = rejected_at_intake(wired, body(request_id="child", restore_from="rlq://parent"))

    assert why.startswith("restore_from: rlq://parent: run 'parent' did not complete (running)")
    assert "child" not in twin.jobs_per_request()


def test_a_failed_run_is_refused(wired, twin):
    twin.outcome = "failed"
    wired.service.accept(body(request_id="parent"), message_id="p")
    run_to_end(wired)

    why = rejected_at_intake(wired, body(request_id="child", restore_from="rlq://parent"))

    assert "did not complete (Failed)" in why and "restore_from" in why


def test_a_completed_run_without_a_checkpoint_is_refused(wired):
    wired.store.insert_if_absent(
        RunRecord(
            request_id="no-ckpt",
            state=RunState.notified,
            backend="twin",
            request=TrainingRequest(request_id="no-ckpt", **CARTPOLE),
            completion=CompletionMessage(
                message_id="no-ckpt:completed", request_id="no-ckpt", status="Completed"
            ),
        )
    )

    why = rejected_at_intake(wired, body(request_id="child", restore_from="rlq://no-ckpt"))

    assert why == "restore_from: rlq://no-ckpt: run 'no-ckpt' completed without a checkpoint"


def test_a_child_asking_for_another_backend_than_the_parents_is_refused(settings, twin, clock, tmp_path):
    w = build(
        settings,
        compute={"twin": twin, "ray": ComputeTwin(tmp_path / "other.sqlite3")},  # two backends enabled
        broker=SqliteBroker(settings.data_dir / "queue.sqlite3", clock=clock.epoch),
        clock=clock,
        faults=None,
    )
    completed_parent(w)

    with pytest.raises(InvalidRequest) as err:
        w.service.enqueue({**CARTPOLE, "restore_from": "rlq://parent", "compute": {"backend": "ray"}})

    (e,) = err.value.errors
    assert e["field"] == "restore_from" and "ran on backend 'twin'" in e["message"]
    assert "set compute.backend to 'twin'" in e["message"]
    assert w.broker.peek(w.settings.queue_name) == []


@pytest.mark.parametrize(
    ("restore_from", "needle"),
    [("rlq://", "expected rlq://<request_id>"), ("rlq://../etc", "expected rlq://<request_id>")],
)
def test_a_malformed_reference_is_a_field_error(wired, restore_from, needle):
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue({**CARTPOLE, "restore_from": restore_from})

    (e,) = err.value.errors
    assert e["field"] == "restore_from" and needle in e["message"]


def test_a_run_cannot_restore_from_itself(wired):
    why = rejected_at_intake(wired, body(request_id="loop", restore_from="rlq://loop"))

    assert "cannot restore from itself" in why
