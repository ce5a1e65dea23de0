"""Several host processes drain one queue at once, each with ``maxConcurrentCalls`` > 1 receivers,
while every request arrives twice at the same moment: one submit call per request and one
completion message per request, counted exactly — on the real SQLite queue and run store, with the
compute twin and on a real Ray head.

Both backends refuse a second job for a request by themselves (the twin's ``submit`` returns the
job already there, Ray refuses a submission id it has seen), so the number of jobs cannot show a
service that asks twice: the tests count the submit calls rlq makes (the twin's own ``submits``
counter; on Ray, ``submit_job`` calls noted by ``tests/support/ray_submits.py`` in every host
process) and assert exactly one per request, besides one job per request.

The copies of a request are sent back to back and every process starts on one signal, so the
copies are taken by different receivers within milliseconds; ``RLQ_TEST_ENSURE_DELAY_S`` holds
each intake in ensure_compute a moment, so the copies' intakes overlap. The test checks that all
of them did (the intake journal), so a run where nothing raced cannot pass.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.adapters.compute.ray_jobs import submission_id_for
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.run import RunState
from shared.localhost.ray_head import auth_headers
from shared.settings import Settings
from tests.guarantees.crash_driver import (
    AUDIT_SUBSCRIPTION,
    NOTIFIED,
    TOPIC_SENDS,
    is_completion,
    prepare,
    read_records,
)
from tests.guarantees.host_process import INTAKES, host_env, run_together, start_hosts
from tests.ray.conftest import STANDIN_TRAIN
from tests.support.ray_submits import JOURNAL_ENV, submit_job_calls
from tests.support.readme import readme_number


def enqueue_twice(data: Path, request_ids: list[str], stop: dict) -> None:
    broker = prepare(Settings(data_dir=data))
    for rid in request_ids:  # the two copies of a request side by side: taken at the same moment
        body = json.dumps({"request_id": rid, "env": "CartPole-v1", "algorithm": "PPO", "stop": stop})
        assert broker.send("training-requests", body.encode(), message_id=f"{rid}-a")
        assert broker.send("training-requests", body.encode(), message_id=f"{rid}-b")
    broker.close()


def run_hosts(data: Path, n: int, env_extra: dict[str, str], *, max_seconds: float) -> None:
    env = host_env(data, RLQ_MAX_IN_FLIGHT="1000", RLQ_TEST_ENSURE_DELAY_S="0.3", **env_extra)
    run_together(
        start_hosts("tests.guarantees.host_process", env, n, max_seconds=max_seconds),
        max_seconds=max_seconds,
    )


def assert_once_each(
    data: Path, request_ids: list[str], jobs: dict[str, int], submits: dict[str, int]
) -> dict[str, int]:
    s = Settings(data_dir=data)
    store, broker = SqliteRunStore(s.store_db), SqliteBroker(s.queue_db)
    try:
        records = {rid: store.get(rid) for rid in request_ids}
        assert all(r is not None and r.state is RunState.notified for r in records.values()), {
            rid: r and r.state for rid, r in records.items()
        }
        assert submits == {rid: 1 for rid in request_ids}, f"submit calls per request: {submits}"
        assert jobs == {rid: 1 for rid in request_ids}, f"jobs per request: {jobs}"
        seen = Counter(  # completion messages: the topic carries model-promoted events too
            m.message_id
            for m in broker.peek(s.topic_name, subscription=AUDIT_SUBSCRIPTION, limit=10**5)
            if is_completion(m.message_id)
        )
        assert seen == Counter({f"{rid}:completed": 1 for rid in request_ids}), seen
        landed = Counter(
            x["message_id"]
            for x in read_records(data / TOPIC_SENDS)
            if x["landed"] and is_completion(x["message_id"])
        )
        assert landed == seen, f"sends that landed: {landed}"
        notified = Counter(x["message_id"] for x in read_records(data / NOTIFIED))
        assert set(notified) == set(seen)
        assert broker.counts(s.queue_name) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
        # every copy was handled, and copies of one request overlapped in time in different receivers
        intakes = read_records(data / INTAKES)
        assert Counter(x["message_id"] for x in intakes) == Counter(
            {f"{rid}-{c}": 1 for rid in request_ids for c in "ab"}
        )
        by_id = {x["message_id"]: x for x in intakes}
        overlapped = {
            rid
            for rid in request_ids
            if (a := by_id[f"{rid}-a"])["start"] < (b := by_id[f"{rid}-b"])["end"] and b["start"] < a["end"]
        }
        processes = {x["pid"] for x in intakes}
        return {"overlapping_copies": len(overlapped), "processes": len(processes)}
    finally:
        store.close()
        broker.close()


def test_three_hosts_four_receivers_each_every_request_twice_on_the_twin(tmp_path):
    data = tmp_path / "rlq"
    ids = [f"race-{i:03d}" for i in range(40)]
    enqueue_twice(data, ids, {"timesteps_total": 10_000})
    run_hosts(data, 3, {"RLQ_BACKEND": "twin"}, max_seconds=180)
    twin = ComputeTwin(data / "twin.sqlite3")
    try:
        jobs, submits = twin.jobs_per_request(), twin.submits()
    finally:
        twin.close()
    seen = assert_once_each(data, ids, jobs, submits)
    print(seen)
    assert seen["processes"] == 3  # every process took part
    pairs = readme_number(r"all (\d+) pairs of copies processed at overlapping times")
    assert seen["overlapping_copies"] == pairs == len(ids), "copies not processed at once: not raced"


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_two_hosts_every_request_twice_on_a_real_ray_head(tmp_path, ray_head):
    from ray.job_submission import JobSubmissionClient

    package = tmp_path / "standin" / "trainer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(STANDIN_TRAIN)
    data = tmp_path / "rlq"
    ids = [f"ray-race-{i}" for i in range(4)]
    enqueue_twice(data, ids, {"training_iteration": 2})
    journal = tmp_path / "submit-job-calls.jsonl"
    run_hosts(
        data,
        2,
        {
            "RLQ_BACKEND": "ray",
            "RLQ_RAY_DASHBOARD_PORT": str(ray_head.dashboard_port),
            "RLQ_RAY_AUTH_TOKEN": ray_head.token.get_secret_value(),
            "RLQ_TEST_TRAINER_PACKAGE": str(package),
            JOURNAL_ENV: str(journal),
        },
        max_seconds=600,
    )
    client = JobSubmissionClient(ray_head.address, headers=auth_headers(ray_head.token))
    wanted = {submission_id_for(rid): rid for rid in ids}
    jobs = Counter(wanted[j.submission_id] for j in client.list_jobs() if j.submission_id in wanted)
    submits = {wanted.get(sid, sid): n for sid, n in submit_job_calls(journal).items()}
    seen = assert_once_each(data, ids, dict(jobs), submits)
    print(seen)
    pairs = readme_number(r"(\d+) overlapping pairs")
    assert seen["overlapping_copies"] == pairs == len(ids), "copies not processed at once: not raced"
