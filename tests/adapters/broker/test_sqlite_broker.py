"""What only the SQLite Service Bus twin promises: its own API (counts, peek, entities, the
dead-letter inbox, resubmission), settling by message id, and processes, threads and crashes.

What every broker promises (peek-lock, lock expiry, delivery counts, dead letters, duplicate
detection, scheduling, the ports) is in ``tests/contract/broker_contract.py``, run against this
twin and the Service Bus adapters by ``tests/contract/test_brokers.py``.

Time is a fake clock the test steps; the cross-process tests use real files and real processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import (
    MessageLockLost,
    SqliteBroker,
    SqliteRejecter,
)
from shared.errors import TransientError
from shared.ports import DeadLetterInbox, Rejecter
from tests.support.clock import FakeClock

Q = "training-requests"


@pytest.fixture
def broker(tmp_path: Path, clock: FakeClock):
    b = SqliteBroker(
        tmp_path / "bus.db",
        lock_duration_s=30,
        max_delivery_count=10,
        duplicate_detection_window_s=600,
        clock=clock.epoch,
    )
    yield b
    b.close()


def one(b: SqliteBroker, entity: str = Q, **kw) -> object:
    got = b.receive(entity, **kw)
    assert len(got) == 1, got
    return got[0]


# --- peek-lock ---------------------------------------------------------------------------------


def test_send_receive_complete_round_trip(broker: SqliteBroker, clock: FakeClock) -> None:
    assert (
        broker.send(
            Q, '{"a": 1}', message_id="m1", correlation_id="c1", application_properties={"kind": "train"}
        )
        is True
    )
    m = one(broker)
    assert (m.message_id, m.body, m.delivery_count, m.correlation_id) == ("m1", b'{"a": 1}', 1, "c1")
    assert m.content_type == "application/json"
    assert m.application_properties == {"kind": "train"}
    assert m.enqueued_at == clock.now
    assert m.locked_until == clock.epoch() + 30
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 1, "dead_letter": 0}
    assert broker.complete(m) is True
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    assert broker.receive(Q) == []


def test_default_message_ids_are_unique(broker: SqliteBroker) -> None:
    for _ in range(3):
        assert broker.send(Q, b"x")
    ids = {m.message_id for m in broker.receive(Q, max_messages=10)}
    assert len(ids) == 3


def test_locked_message_is_hidden_from_a_second_receiver(
    broker: SqliteBroker, tmp_path: Path, clock: FakeClock
) -> None:
    broker.send(Q, b"only")
    first = one(broker)
    other = SqliteBroker(tmp_path / "bus.db", lock_duration_s=30, clock=clock.epoch)
    try:
        assert other.receive(Q) == []
        assert broker.receive(Q) == []
    finally:
        other.close()
    assert broker.complete(first) is True


def test_renew_lock_extends_it(broker: SqliteBroker, clock: FakeClock) -> None:
    broker.send(Q, b"x")
    m = one(broker)
    clock.advance(20)
    new_until = broker.renew_lock(m)
    assert new_until == clock.epoch() + 30
    assert m.locked_until == new_until
    clock.advance(20)  # 40 s after receive: past the first lock, inside the renewed one
    assert broker.receive(Q) == []
    assert broker.complete(m) is True


def test_abandon_redelivers_at_once_with_count_kept(broker: SqliteBroker) -> None:
    broker.send(Q, b"x", application_properties={"a": 1})
    m = one(broker)
    assert broker.abandon(m, properties_to_modify={"reason": "busy"}) is True
    again = one(broker)
    assert again.delivery_count == 2
    assert again.application_properties == {"a": 1, "reason": "busy"}


def test_complete_after_lock_taken_by_another_raises(broker: SqliteBroker, clock: FakeClock) -> None:
    broker.send(Q, b"x")
    slow = one(broker)
    clock.advance(31)
    fast = one(broker)
    with pytest.raises(MessageLockLost) as info:
        broker.complete(slow)
    assert isinstance(info.value, TransientError)
    with pytest.raises(MessageLockLost):
        broker.abandon(slow)
    with pytest.raises(MessageLockLost):
        broker.dead_letter(slow, reason="r", description="d")
    assert broker.counts(Q)["locked"] == 1
    assert broker.complete(fast) is True


# --- dead letters ------------------------------------------------------------------------------


def test_dead_letter_by_id_then_complete_is_a_no_op(broker: SqliteBroker) -> None:
    broker.send(Q, b"{}", message_id="req-7")
    m = one(broker)
    assert (
        broker.dead_letter_by_id(Q, "req-7", reason="InvalidRequest", description="experiment: required")
        is True
    )
    assert broker.complete(m) is False
    assert broker.abandon(m) is False
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 1}
    assert broker.dead_letters(Q)[0].reason == "InvalidRequest"


def test_dead_letter_by_id_needs_a_locked_message(broker: SqliteBroker) -> None:
    broker.send(Q, b"{}", message_id="req-8")
    assert broker.dead_letter_by_id(Q, "req-8", reason="r", description="d") is False
    assert broker.dead_letter_by_id(Q, "unknown", reason="r", description="d") is False
    assert broker.counts(Q)["active"] == 1


def test_resubmit_dead_letter_sends_a_new_message(broker: SqliteBroker, clock: FakeClock) -> None:
    broker.send(Q, b"payload", message_id="orig", correlation_id="c")
    broker.dead_letter(one(broker), reason="Oops", description="fixed since")
    [dead] = broker.dead_letters(Q)
    assert dead.dead_lettered_at == clock.now
    seq = dead.sequence_number
    new_id = broker.resubmit_dead_letter(Q, seq)
    assert new_id == "orig:resubmit:1"
    assert broker.dead_letters(Q) == []
    again = one(broker)
    assert (again.message_id, again.body, again.correlation_id, again.delivery_count) == (
        new_id,
        b"payload",
        "c",
        1,
    )
    assert again.sequence_number != seq
    # a second trip through the dead-letter queue numbers on, rather than nesting suffixes
    broker.dead_letter(again, reason="Oops", description="again")
    assert broker.resubmit_dead_letter(Q, broker.dead_letters(Q)[0].sequence_number) == "orig:resubmit:2"
    with pytest.raises(KeyError):
        broker.resubmit_dead_letter(Q, 10_000)


def test_purge_dead_letters(broker: SqliteBroker) -> None:
    for i in range(3):
        broker.send(Q, b"x", message_id=f"m{i}")
    for m in broker.receive(Q, max_messages=3):
        broker.dead_letter(m, reason="r", description="d")
    assert broker.purge_dead_letters(Q) == 3
    assert broker.counts(Q)["dead_letter"] == 0


# --- duplicate detection and scheduling --------------------------------------------------------


def test_duplicate_detection_is_per_entity(broker: SqliteBroker) -> None:
    assert broker.send("a", b"x", message_id="id") is True
    assert broker.send("b", b"x", message_id="id") is True


def test_no_duplicate_detection_with_zero_window(tmp_path: Path, clock: FakeClock) -> None:
    with SqliteBroker(tmp_path / "b.db", duplicate_detection_window_s=0, clock=clock.epoch) as b:
        assert b.send(Q, b"x", message_id="id") and b.send(Q, b"x", message_id="id")
        assert b.counts(Q)["active"] == 2


def test_scheduled_message_invisible_until_due(broker: SqliteBroker, clock: FakeClock) -> None:
    due = datetime.fromtimestamp(clock.epoch() + 60, UTC)
    broker.send(Q, b"later", scheduled_at=due)
    broker.send(Q, b"epoch", scheduled_at=clock.epoch() + 120)
    assert broker.receive(Q) == []
    assert broker.counts(Q) == {"active": 0, "scheduled": 2, "locked": 0, "dead_letter": 0}
    clock.advance(60)
    m = one(broker)
    assert m.body == b"later"
    assert m.scheduled_at == due
    assert broker.receive(Q) == []
    broker.complete(m)
    clock.advance(60)
    assert one(broker).body == b"epoch"


# --- topics ------------------------------------------------------------------------------------


def test_topic_fans_out_and_subscriptions_settle_independently(
    broker: SqliteBroker, clock: FakeClock
) -> None:
    broker.create_topic("done")
    broker.create_subscription("done", "notifier")
    broker.create_subscription("done", "audit")
    broker.create_subscription("done", "audit")  # idempotent
    assert broker.subscriptions("done") == ["audit", "notifier"]
    assert broker.send("done", b"fin", message_id="r1:completed") is True
    n = one(broker, "done", subscription="notifier")
    a = one(broker, "done", subscription="audit")
    assert (n.subscription, a.subscription, n.message_id, a.message_id) == (
        "notifier",
        "audit",
        "r1:completed",
        "r1:completed",
    )
    assert broker.complete(n) is True
    broker.abandon(a)
    assert broker.receive("done", subscription="notifier") == []
    again = one(broker, "done", subscription="audit")
    assert again.delivery_count == 2
    broker.dead_letter(again, reason="r", description="d")
    assert broker.counts("done", subscription="audit")["dead_letter"] == 1
    assert broker.counts("done", subscription="notifier")["dead_letter"] == 0
    # duplicate detection is on the topic: the repeat reaches no subscription
    assert broker.send("done", b"fin", message_id="r1:completed") is False
    assert broker.receive("done", subscription="notifier") == []


def test_topic_without_subscriptions_drops(broker: SqliteBroker) -> None:
    broker.create_topic("empty")
    assert broker.send("empty", b"x") is True
    broker.create_subscription("empty", "late")
    assert broker.receive("empty", subscription="late") == []


def test_entity_kinds_do_not_mix(broker: SqliteBroker) -> None:
    broker.create_queue("q")
    with pytest.raises(ValueError, match="already exists as a queue"):
        broker.create_topic("q")
    with pytest.raises(ValueError, match="not contain"):
        broker.send("a/Subscriptions/b", b"x")
    broker.create_subscription("t", "s")
    with pytest.raises(ValueError, match=r"'t' is a topic: receive from one of its subscriptions \(s\)"):
        broker.receive("t")
    with pytest.raises(ValueError, match="already exists as a queue"):
        broker.receive("q", subscription="s")


def test_peek_does_not_lock(broker: SqliteBroker) -> None:
    broker.send(Q, b"a")
    broker.send(Q, b"b")
    locked = one(broker)
    peeked = broker.peek(Q)
    assert [p.body for p in peeked] == [b"a", b"b"]
    assert [p.locked_until > 0 for p in peeked] == [True, False]
    assert all(p.lock_token == "" for p in peeked)
    assert one(broker).body == b"b"
    with pytest.raises(MessageLockLost):
        broker.complete(peeked[0])
    assert broker.complete(locked)


# --- ports -------------------------------------------------------------------------------------


def test_rejecter_port_dead_letters_the_locked_message_with_its_reason(broker: SqliteBroker) -> None:
    rejecter = SqliteRejecter(broker, Q)
    assert isinstance(rejecter, Rejecter) and isinstance(broker, DeadLetterInbox)
    broker.send(Q, b"{bad", message_id="bad-1")
    (msg,) = broker.receive(Q)
    rejecter.reject(
        message_id="bad-1", body=msg.body, reason="InvalidRequest", description="(body): malformed"
    )
    assert broker.complete(msg) is False  # settled by the rejection, as the handler's own message
    (dead,) = broker.dead_letters(Q)
    assert (dead.message_id, dead.reason, dead.description) == (
        "bad-1",
        "InvalidRequest",
        "(body): malformed",
    )
    # a message not locked here (sent around the local host) is only recorded: no error, nothing moved
    rejecter.reject(message_id="elsewhere", body=b"{}", reason="InvalidRequest", description="x")
    assert [d.message_id for d in broker.dead_letters(Q)] == ["bad-1"]


# --- processes and crashes ---------------------------------------------------------------------


def _drain(path: str, out: str, ready, go) -> None:
    b = SqliteBroker(path)
    seen = []
    ready.set()
    go.wait(30)
    misses = 0
    while misses < 3:
        got = b.receive(Q, max_messages=4)
        if not got:
            misses += 1
            time.sleep(0.02)
            continue
        misses = 0
        for m in got:
            time.sleep(0.001)  # a handler's work, so the two receivers overlap
            seen.append((m.message_id, m.delivery_count, b.complete(m)))
    b.close()
    Path(out).write_text(json.dumps(seen))


def test_two_processes_never_share_a_locked_message(tmp_path: Path) -> None:
    path = str(tmp_path / "bus.db")
    with SqliteBroker(path) as b:
        for i in range(500):
            b.send(Q, str(i), message_id=f"m{i}")
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event(), ctx.Event()]
    outs = [str(tmp_path / f"seen{i}.json") for i in range(2)]
    procs = [ctx.Process(target=_drain, args=(path, outs[i], readies[i], go)) for i in range(2)]
    for p in procs:
        p.start()
    for r in readies:
        assert r.wait(60)
    go.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    seen = [json.loads(Path(o).read_text()) for o in outs]
    ids = [mid for s in seen for mid, _, _ in s]
    assert sorted(ids) == sorted(f"m{i}" for i in range(500))  # each exactly once
    assert all(count == 1 and done for s in seen for _, count, done in s)
    assert all(len(s) > 0 for s in seen), "both processes should have taken part"
    with SqliteBroker(path) as b:
        assert b.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_threads_sharing_one_broker_take_each_message_once(tmp_path: Path) -> None:
    with SqliteBroker(tmp_path / "bus.db") as b:
        for i in range(400):
            b.send(Q, str(i), message_id=f"m{i}")
        taken: list[list[str]] = [[] for _ in range(4)]
        start = threading.Barrier(4)

        def work(k: int) -> None:
            start.wait(10)
            while got := b.receive(Q, max_messages=3):
                for m in got:
                    assert b.complete(m)
                    taken[k].append(m.message_id)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ids = [mid for t in taken for mid in t]
        assert sorted(ids) == sorted(f"m{i}" for i in range(400))
        assert b.counts(Q)["active"] == 0


def test_in_memory_broker_for_unit_tests(clock: FakeClock) -> None:
    with SqliteBroker(":memory:", clock=clock.epoch) as b:
        b.send(Q, b"x")
        assert b.complete(one(b))
        assert b.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def _churn(path: str, sent, completed) -> None:
    b = SqliteBroker(path, lock_duration_s=60)
    i = 0
    while True:
        for _ in range(2):
            b.send(Q, str(i), message_id=f"m{i}")
            i += 1
            sent.value = i
        m = b.receive(Q)[0]
        b.complete(m)
        completed.value += 1


def test_data_survives_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "bus.db")
    SqliteBroker(path).close()
    ctx = multiprocessing.get_context("spawn")
    sent, completed = ctx.Value("i", 0), ctx.Value("i", 0)
    proc = ctx.Process(target=_churn, args=(path, sent, completed))
    proc.start()
    deadline = time.monotonic() + 60
    while sent.value < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    n_sent, n_done = sent.value, completed.value
    assert n_sent >= 400

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with SqliteBroker(path) as b:
        ids = [int(m.body) for m in b.peek(Q, limit=10_000)]
        c = b.counts(Q)
    # FIFO with one consumer: what is left is one contiguous run of the sends, the last send or
    # completion possibly committed just before its counter moved
    assert ids == list(range(ids[0], ids[-1] + 1))
    assert ids[-1] + 1 in (n_sent, n_sent + 1)
    assert ids[0] in (n_done, n_done + 1)
    assert c["active"] + c["locked"] == len(ids)
    assert c["locked"] in (0, 1)
    # Reopen as if two minutes later: a lock the dead process held has expired.
    with SqliteBroker(path, clock=lambda: time.time() + 120) as b:
        drained = {}
        while got := b.receive(Q, max_messages=50):
            for m in got:
                drained[int(m.body)] = m.delivery_count
                b.complete(m)
        # all there, once each; only the message the dead process had locked was delivered before
        assert sorted(drained) == ids
        assert drained[ids[0]] == 1 + c["locked"]
        assert {drained[i] for i in ids[1:]} == {1}
        assert b.counts(Q)["active"] == 0
