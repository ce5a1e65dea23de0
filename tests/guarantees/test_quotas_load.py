"""Team caps and priorities under load: host processes (``function_app.py`` on the local host,
``maxConcurrentCalls`` receivers each, the poller's timer every second) draining one SQLite queue
on the compute twin, all started on one signal.

* **Order**: one slot (``RLQ_MAX_IN_FLIGHT=1``) and requests of every priority from three teams;
  every request that started from the line (deferred at least once) started in line order: high
  before normal before low, the oldest first within a level (aging is set past the test's length).
* **Caps**: three slots, team-a capped at 1 run in flight and team-b at 2; the compute each team
  held, journaled by every process, never passed its cap, team-a's requests waited saying
  ``waiting for team quota``, and the caps were reached.

Both: every request notified, one submit call and one job each, one completion message each,
nothing left on the queue and no dead letter. Each process journals, in ``holds.jsonl``, when a
job was submitted (after the submit call returned) and when its run ended (before the terminal
state was written), so a journaled hold lies inside the real one: an overlap in the journal is an
overlap in fact. Run as ``python -m tests.guarantees.test_quotas_load`` it is one such process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.composition import build
from shared.contracts.request import PRIORITIES
from shared.contracts.run import TERMINAL, RunState
from shared.localhost import LocalHost
from shared.settings import Settings
from tests.guarantees import host_process
from tests.guarantees.crash_driver import (
    AUDIT_SUBSCRIPTION,
    NOTIFIED,
    FileNotifier,
    append_record,
    audited_broker,
    prepare,
    read_records,
    settled,
)
from tests.guarantees.host_process import host_env, run_together

HOLDS = "holds.jsonl"
MAX_SECONDS = 120


# --- the host process --------------------------------------------------------------------------


def journal_holds(w, path: Path) -> None:
    """Note each submit (after it returned), each terminal write (before it) and each deferral."""
    for backend in w.service.core.compute.values():
        submit = backend.submit

        def submitted(request, attempt=1, _submit=submit):
            run_id = _submit(request, attempt)
            append_record(path, {"request_id": request.request_id, "event": "start", "t": time.time()})
            return run_id

        backend.submit = submitted
    update = w.store.update

    def journaled(record):
        if record.state in TERMINAL:
            append_record(path, {"request_id": record.request_id, "event": "end", "t": time.time()})
        stored = update(record)
        if stored.waiting is not None:
            append_record(path, {"request_id": record.request_id, "event": "wait", "why": stored.waiting})
        return stored

    w.store.update = journaled


def main(argv: list[str] | None = None) -> int:
    """One host process: the production wiring on the data dir with the holds journaled, hosted
    on the local host with its receivers and timer; starts on a line on stdin, exits 0 once all
    is settled (3 when not within ``--max-seconds``)."""
    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0] if main.__doc__ else None)
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    s = Settings()
    w = build(s, broker=audited_broker(s), notifier=FileNotifier(s.data_dir / NOTIFIED))
    journal_holds(w, s.data_dir / HOLDS)
    host = LocalHost.for_wiring(w)
    print(f"ready {os.getpid()} maxConcurrentCalls={host.config.max_concurrent_calls}", flush=True)
    sys.stdin.readline()
    host.start(http=False)
    deadline = time.monotonic() + args.max_seconds
    try:
        while not settled(w):
            if time.monotonic() > deadline:
                print(f"not settled after {args.max_seconds:.0f} s", file=sys.stderr)
                return 3
            time.sleep(0.2)
    finally:
        host.stop()
    return 0


# --- the test ------------------------------------------------------------------------------------


def enqueue(data: Path, requests: list[tuple[str, str, str]]) -> None:
    broker = prepare(Settings(data_dir=data))
    for rid, team, priority in requests:
        body = {
            "request_id": rid,
            "env": "CartPole-v1",
            "algorithm": "PPO",
            "stop": {"timesteps_total": 10_000},
            "team": team,
            "priority": priority,
        }
        assert broker.send("training-requests", json.dumps(body).encode(), message_id=f"m-{rid}")
    broker.close()


def start_hosts(data: Path, n: int, settings: dict[str, str]) -> list[subprocess.Popen[str]]:
    env = host_env(data, RLQ_BACKEND="twin", RLQ_DEFER_DELAY_S="1", RLQ_PRIORITY_AGING_S="3600", **settings)
    return host_process.start_hosts("tests.guarantees.test_quotas_load", env, n, max_seconds=MAX_SECONDS)


def nothing_lost(data: Path, ids: list[str]) -> dict[str, object]:
    """Every request notified, one submit call and one job each, one completion message each, an
    empty queue; the records by id."""
    s = Settings(data_dir=data)
    store, broker, twin = (
        SqliteRunStore(s.store_db),
        SqliteBroker(s.queue_db),
        ComputeTwin(data / "twin.sqlite3"),
    )
    try:
        records = {rid: store.get(rid) for rid in ids}
        assert {rid: r.state for rid, r in records.items()} == dict.fromkeys(ids, RunState.notified)
        assert twin.submits() == dict.fromkeys(ids, 1) == twin.jobs_per_request()
        topic = broker.peek(s.topic_name, subscription=AUDIT_SUBSCRIPTION, limit=10**4)
        seen = Counter(m.message_id for m in topic if m.message_id.endswith(":completed"))
        assert seen == Counter({f"{rid}:completed": 1 for rid in ids})
        assert broker.counts(s.queue_name) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
        return records
    finally:
        store.close()
        broker.close()
        twin.close()


def holds(data: Path) -> tuple[list[tuple[float, int, str]], list[dict]]:
    """The journal as (time, +1 start / -1 end, request id), ends first at a tie; and the waits."""
    journal = read_records(data / HOLDS)
    starts = [(x["t"], 1, x["request_id"]) for x in journal if x["event"] == "start"]
    ends: dict[str, float] = {}
    for x in journal:
        if x["event"] == "end":
            ends[x["request_id"]] = min(x["t"], ends.get(x["request_id"], x["t"]))
    events = sorted([*starts, *((t, -1, rid) for rid, t in ends.items())])
    return events, [x for x in journal if x["event"] == "wait"]


def most_at_once(events: list[tuple[float, int, str]], team_of: dict[str, str], team: str | None) -> int:
    held = top = 0
    for _, step, rid in events:
        if team is None or team_of[rid] == team:
            held += step
            top = max(top, held)
    return top


ORDER = [  # (id, team, priority): sent in this order
    ("o-1", "team-a", "low"),
    ("o-2", "team-b", "normal"),
    ("o-3", "team-c", "high"),
    ("o-4", "team-a", "normal"),
    ("o-5", "team-b", "low"),
    ("o-6", "team-c", "normal"),
    ("o-7", "team-a", "high"),
]
# team-a's high requests first: they lead the line, so while one runs the others wait for its quota
CAPS = [
    *((f"c-a{i}", "team-a", "high") for i in range(6)),
    *((f"c-b{i}", "team-b", "normal") for i in range(3)),
    *((f"c-c{i}", "team-c", "low") for i in range(3)),
]


def test_order_and_team_caps_hold_under_load_with_nothing_lost(tmp_path):
    order_data, caps_data = tmp_path / "order", tmp_path / "caps"
    enqueue(order_data, ORDER)
    enqueue(caps_data, CAPS)
    quotas = {"team-a": {"max_in_flight": 1}, "team-b": {"max_in_flight": 2}}
    run_together(
        [
            *start_hosts(order_data, 2, {"RLQ_MAX_IN_FLIGHT": "1"}),
            *start_hosts(caps_data, 2, {"RLQ_MAX_IN_FLIGHT": "3", "RLQ_TEAM_QUOTAS": json.dumps(quotas)}),
        ],
        max_seconds=MAX_SECONDS,
    )

    # order: whoever started from the line started in line order
    records = nothing_lost(order_data, [rid for rid, _, _ in ORDER])
    events, _ = holds(order_data)
    assert most_at_once(events, {}, None) == 1
    started = [rid for _, step, rid in events if step == 1]
    from_line = [rid for rid in started if records[rid].deferrals > 0]
    rank = {
        rid: (-PRIORITIES.index(records[rid].request.priority), records[rid].created_at) for rid in from_line
    }
    assert len(from_line) >= len(ORDER) - 2, started  # all but the first to arrive waited in line
    assert from_line == sorted(from_line, key=rank.__getitem__), [
        (rid, records[rid].request.priority) for rid in started
    ]

    # caps: never passed, reached, and the waits said why
    records = nothing_lost(caps_data, [rid for rid, _, _ in CAPS])
    events, waits = holds(caps_data)
    team_of = {rid: team for rid, team, _ in CAPS}
    at_once = {team: most_at_once(events, team_of, team) for team in ("team-a", "team-b", "team-c")}
    print({"at_once": at_once, "overall": most_at_once(events, team_of, None), "waits": len(waits)})
    assert most_at_once(events, team_of, None) <= 3
    assert at_once["team-a"] == 1 and at_once["team-b"] <= 2
    assert "waiting for team quota: team team-a has 1 of 1 runs in flight" in {w["why"] for w in waits}
    assert all(r.waiting is None for r in records.values())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
