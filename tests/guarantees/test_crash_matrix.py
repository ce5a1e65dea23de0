"""Crash matrix: a real SIGKILL at every fault point, with every request delivered twice.

For each point in ``FAULT_POINTS`` a processing process (``crash_driver.py``, the production
wiring on a data dir) is started with ``RLQ_FAULT_AT=<point>`` and dies by SIGKILL the first time
any request reaches that point; a second process, without the fault, then runs until everything
settles (locks of the killed process expire in real time: ``RLQ_LOCK_DURATION_S=1``). Then:

* no request lost: every record exists and reached ``notified``;
* no second submit: the service called the compute's ``submit`` exactly once per request (the
  twin's own call counter: the twin, like Ray and Azure ML, keeps one job per request however
  often it is asked, so the job count alone could not show a second call), and one job exists;
* exactly one completion message per request on the topic (an audit subscription nobody consumes),
  and the outbox landed at most one send per message id (repeats were dropped by duplicate detection).

On Ray: ``RLQ_CRASH_BACKEND=ray`` runs the whole matrix against the session's real Ray head, its
jobs running the stand-in trainer (``tests/ray/conftest.py``), counting ``submit_job`` calls per
submission id (``tests/support/ray_submits.py``) and Ray's jobs by submission id. Whatever the
setting, :func:`test_a_lost_ray_job_resumes_once_through_a_kill_at_each_step_of_its_resume` runs on
Ray: a job lost with its machines, and the processes resuming it killed at each step of the
resume's submit in turn; one submit call and one job per attempt.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.adapters.compute.ray_jobs import submission_id_for
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.run import RunRecord, RunState
from shared.core.faults import FAULT_POINTS
from shared.curves import load_metrics
from shared.localhost.ray_head import auth_headers
from shared.settings import Settings
from tests.guarantees.crash_driver import (
    AUDIT_SUBSCRIPTION,
    NOTIFIED,
    TOPIC_SENDS,
    driver_env,
    is_completion,
    prepare,
    read_records,
)
from tests.ray.conftest import STANDIN_LOST, write_standin
from tests.support.ray_heads import TestHead
from tests.support.ray_submits import JOURNAL_ENV, submit_job_calls
from tests.support.readme import readme_number

REPO = Path(__file__).resolve().parents[2]
BACKEND = os.environ.get("RLQ_CRASH_BACKEND", "twin")
MODE = os.environ.get("RLQ_CRASH_MODE", "host")  # host: through shared.localhost; direct: no host
CARTPOLE = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}


@dataclass(frozen=True)
class Backend:
    """The compute the drivers use: ``env`` for each driver process, ``count`` of its jobs and calls."""

    name: str
    env: dict[str, str]
    journal: Path | None = None
    head: TestHead | None = None

    def count(self, data_dir: Path, request_ids: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Jobs and submit calls per request (its first attempt's job on Ray)."""
        if self.name == "twin":
            twin = ComputeTwin(data_dir / "twin.sqlite3")
            try:
                return twin.jobs_per_request(), twin.submits()
            finally:
                twin.close()
        wanted = {submission_id_for(rid): rid for rid in request_ids}
        calls = self.submit_calls()
        jobs = Counter(wanted[sid] for sid in self.ray_jobs() if sid in wanted)
        return dict(jobs), {wanted.get(sid, sid): n for sid, n in calls.items()}

    def submit_calls(self) -> Counter[str]:
        """``submit_job`` calls per submission id (Ray)."""
        assert self.journal is not None
        return submit_job_calls(self.journal)

    def ray_jobs(self) -> list[str]:
        """The submission id of every job Ray keeps."""
        from ray.job_submission import JobSubmissionClient

        assert self.head is not None
        client = JobSubmissionClient(self.head.address, headers=auth_headers(self.head.token))
        return [j.submission_id for j in client.list_jobs() if j.submission_id]


def ray_backend(head: TestHead, tmp_path: Path) -> Backend:
    """Drivers on the head ``head``, their jobs running the stand-in trainer, their submit calls noted."""
    package = write_standin(tmp_path / "standin")
    journal = tmp_path / "submit-job-calls.jsonl"
    env = {
        "RLQ_BACKEND": "ray",
        "RLQ_RAY_DASHBOARD_PORT": str(head.dashboard_port),
        "RLQ_RAY_AUTH_TOKEN": head.token.get_secret_value(),
        "RLQ_TEST_TRAINER_PACKAGE": str(package),
        JOURNAL_ENV: str(journal),
    }
    return Backend("ray", env, journal=journal, head=head)


@pytest.fixture
def backend(request, tmp_path) -> Backend:
    if BACKEND == "twin":
        return Backend("twin", {"RLQ_BACKEND": "twin"})
    if BACKEND != "ray":
        pytest.fail(f"RLQ_CRASH_BACKEND={BACKEND!r}: allowed: twin, ray")
    return ray_backend(request.getfixturevalue("ray_head"), tmp_path)


def run_driver(
    data_dir: Path,
    backend: Backend,
    *,
    fault: str | None = None,
    max_seconds: float | None = None,
    args: tuple[str, ...] = (),
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    if max_seconds is None:
        max_seconds = 180 if backend.name == "ray" else 60  # Ray jobs start in seconds, not milliseconds
    env = driver_env(
        data_dir,
        RLQ_MAX_IN_FLIGHT="1000",
        **backend.env,
        **({"RLQ_FAULT_AT": fault} if fault else {}),
        **extra,
    )
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.guarantees.crash_driver",
            "--mode",
            MODE,
            "--max-seconds",
            str(max_seconds),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=max_seconds + 60,
        check=False,
    )


def enqueue(data_dir: Path, request_ids: list[str], *, copies: int = 2, request: dict = CARTPOLE) -> None:
    """Each request ``copies`` times under different message ids, copies interleaved."""
    broker = prepare(Settings(data_dir=data_dir))
    for n in range(copies):
        for rid in request_ids:
            body = json.dumps({**request, "request_id": rid}).encode()
            assert broker.send("training-requests", body, message_id=f"{rid}-delivery-{n}")
    broker.close()


def assert_all_accounted_for(data_dir: Path, request_ids: list[str], backend: Backend) -> dict[str, int]:
    """The guarantees, checked on the files the processes left behind. Returns publish attempts per id."""
    s = Settings(data_dir=data_dir)
    store = SqliteRunStore(s.store_db)
    broker = SqliteBroker(s.queue_db)
    try:
        records = {rid: store.get(rid) for rid in request_ids}
        lost = [rid for rid, r in records.items() if r is None or r.state is not RunState.notified]
        assert not lost, (
            f"requests not carried through: {[(rid, records[rid] and records[rid].state) for rid in lost]}"
        )
        assert all(r.published_at is not None and r.run_id for r in records.values())

        jobs, submits = backend.count(data_dir, request_ids)
        assert submits == {rid: 1 for rid in request_ids}, f"submit calls per request: {submits}"
        assert jobs == {rid: 1 for rid in request_ids}, f"jobs per request: {jobs}"

        # the completion messages: the topic carries model-promoted events too (docs/models.md)
        seen = [
            m
            for m in broker.peek(s.topic_name, subscription=AUDIT_SUBSCRIPTION, limit=10**6)
            if is_completion(m.message_id)
        ]
        per_id = Counter(m.message_id for m in seen)
        assert per_id == Counter({f"{rid}:completed": 1 for rid in request_ids}), per_id
        for m in seen:
            assert json.loads(m.body)["run_id"] == records[m.correlation_id].run_id

        sends = [x for x in read_records(data_dir / TOPIC_SENDS) if is_completion(x["message_id"])]
        landed = Counter(x["message_id"] for x in sends if x["landed"])
        # The journal line follows the send, so a SIGKILL that lands between the two (another poll
        # thread publishing at that moment) can leave a landed send unjournaled; never two landed.
        assert set(landed) <= set(per_id) and all(n == 1 for n in landed.values()), (
            f"the outbox landed more than one send for an id: {landed}"
        )
        notified = Counter(x["message_id"] for x in read_records(data_dir / NOTIFIED))
        assert set(notified) == set(per_id), "a completion message never reached the notifier"

        assert broker.counts(s.queue_name) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
        return dict(Counter(x["message_id"] for x in sends))
    finally:
        store.close()
        broker.close()


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_sigkill_at_each_fault_point_with_duplicate_delivery(tmp_path, point, backend):
    data = tmp_path / "rlq"
    ids = [f"crash-a-{point}", f"crash-b-{point}"]  # a Ray head keeps its jobs across the cases
    enqueue(data, ids)

    killed = run_driver(data, backend, fault=point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])

    survivor = run_driver(data, backend)
    assert survivor.returncode == 0, survivor.stderr[-3000:]

    attempts = assert_all_accounted_for(data, ids, backend)
    if point == "published":
        # the first process published and died before recording it: the next tick published again,
        # and duplicate detection dropped the repeat
        assert max(attempts.values()) == 2 and sum(attempts.values()) >= 3
    else:
        # nothing else publishes twice: not the copies, not the restart (duplicate detection would
        # hide a second publish from the audit subscription; the send journal does not)
        assert attempts == {f"{rid}:completed": 1 for rid in ids}, attempts


def test_a_kill_at_every_point_in_turn(tmp_path, backend):
    """One process after another, each killed at the next fault point it reaches, then one that finishes."""
    data = tmp_path / "rlq"
    ids = [f"chain-{i}" for i in range(3)]
    enqueue(data, ids, copies=3)
    codes = []
    for point in FAULT_POINTS:
        codes.append(run_driver(data, backend, fault=point).returncode)
    final = run_driver(data, backend)
    assert final.returncode == 0, final.stderr[-3000:]
    # README: "a real SIGKILL at each of the 7 step boundaries": every point was reached and killed
    assert codes == [-signal.SIGKILL] * readme_number(
        r"a real SIGKILL at each of the (\d+) step boundaries"
    ), codes
    assert_all_accounted_for(data, ids, backend)


def test_the_harness_notices_a_lost_request(tmp_path, backend):
    """A record with no message left to carry it never settles: the driver says so instead of passing."""
    data = tmp_path / "rlq"
    enqueue(data, ["kept"], copies=1)
    store = SqliteRunStore(Settings(data_dir=data).store_db)
    store.insert_if_absent(RunRecord(request_id="orphan"))  # as if its message had vanished
    store.close()
    result = run_driver(data, backend, max_seconds=3)
    assert result.returncode == 3 and "orphan" in result.stderr


RESUME_STEPS = ("ensured", "submitted", "recorded")  # the resume's submit: ensure, submit call, run id


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_lost_ray_job_resumes_once_through_a_kill_at_each_step_of_its_resume(tmp_path, ray_head):
    """A real Ray job lost with its machines (the stand-in's driver SIGKILLs itself after a
    checkpoint), and the rlq processes resuming it each SIGKILLed in turn at the next step of the
    resume's submit (``RLQ_TEST_FAULT_ON_RESUME``: only once the loss is recorded): after ensuring
    the compute, right after the ``submit_job`` call, right after recording the run id. A last
    process carries the run to its end. One ``submit_job`` call and one Ray job per attempt, one
    completion message saying 2 attempts, the counters going on from the checkpoint, one
    checkpoint interval lost."""
    backend = ray_backend(ray_head, tmp_path)
    data = tmp_path / "rlq"
    rid = "lost-on-ray"
    request = {**CARTPOLE, "config": {"seed": STANDIN_LOST}, "stop": {"training_iteration": 3}}
    enqueue(data, [rid], request=request)

    runs = [run_driver(data, backend, fault=step, RLQ_TEST_FAULT_ON_RESUME="1") for step in RESUME_STEPS]
    final = run_driver(data, backend)
    assert final.returncode == 0, final.stderr[-3000:]
    assert [r.returncode for r in runs] == [-signal.SIGKILL] * len(RESUME_STEPS), [
        (r.returncode, r.stderr[-1500:]) for r in runs
    ]

    first, second = submission_id_for(rid), submission_id_for(rid, 2)
    assert backend.submit_calls() == {first: 1, second: 1}  # one submit call per attempt, none twice
    assert Counter(j for j in backend.ray_jobs() if j.startswith(first)) == {first: 1, second: 1}
    settings = Settings(data_dir=data)
    store, broker = SqliteRunStore(settings.store_db), SqliteBroker(settings.queue_db)
    try:
        record = store.get(rid)
        seen = [
            m
            for m in broker.peek(settings.topic_name, subscription=AUDIT_SUBSCRIPTION, limit=100)
            if is_completion(m.message_id)
        ]
    finally:
        store.close()
        broker.close()
    assert record is not None and record.state is RunState.notified
    assert record.completion.status == "Completed" and record.completion.attempts == 2, record.completion
    [lost] = record.attempts
    assert lost.run_id == first and lost.resumed_from.endswith("/checkpoints/iter_000001")
    assert [m.message_id for m in seen] == [f"{rid}:completed"]
    # metrics.jsonl: attempt 1 logged 1 and 2 (checkpoint at 1), attempt 2 went on from the checkpoint
    out = data / "runs" / rid
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 2, 3]
    interval = max(b["timesteps"] - a["timesteps"] for a, b in itertools.pairwise(rows[:2]))
    assert rows[1]["timesteps"] - rows[0]["timesteps"] <= interval  # steps lost: one checkpoint interval
    assert lost.steps_lost is not None and lost.steps_lost <= interval
    assert [r["iteration"] for r in load_metrics(out / "metrics.jsonl")] == [1, 2, 3]  # one timeline
