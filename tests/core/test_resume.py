"""A job lost with its machines resumes as the next attempt; a training failure never does.

A scripted backend answers each job's status; it counts the ``submit`` calls rlq makes per attempt
(not the jobs that exist), and a crash between recording the attempt and submitting it is a poll
that raises there.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.composition import Wiring, build
from shared.contracts.completion import CompletionMessage
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress, RunState
from shared.contracts.trainer import JobEnd, end_of_exit
from shared.ports import Checkpoint, JobStatus
from shared.settings import Settings
from tests.support.notifiers import RecordingNotifier
from tests.support.topics import completions


class ScriptedBackend:
    """Jobs named ``<request_id>-a<attempt>``; each ends as the script for its attempt says."""

    name = "twin"

    def __init__(self, ends: dict[int, JobStatus]) -> None:
        self.ends = ends
        self.jobs: dict[str, int] = {}  # run id -> attempt
        self.submits: Counter[int] = Counter()

    def ensure_compute(self, request: TrainingRequest) -> None:
        return None

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        run_id = f"{request_id}-a{attempt}"
        return run_id if run_id in self.jobs else None

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        self.submits[attempt] += 1
        run_id = f"{request.request_id}-a{attempt}"
        self.jobs[run_id] = attempt
        return run_id

    def status(self, run_id: str) -> JobStatus:
        return self.ends.get(self.jobs[run_id], JobStatus(state="succeeded", end=JobEnd.stopped))

    def cancel(self, run_id: str) -> None:
        return None


LOST = JobStatus(
    state="failed",
    error="the job's driver was killed (exit code -9)",
    end=JobEnd.lost,
    progress=Progress(iteration=7, timesteps=7000),
    checkpoint=Checkpoint(uri="file:///runs/r/checkpoints/iter_000006", iteration=6, timesteps=6000),
)


def wire(tmp_path: Path, clock, backend: ScriptedBackend, **extra) -> Wiring:
    (tmp_path / "rlq").mkdir(exist_ok=True)
    settings = Settings(_env_file=None, data_dir=tmp_path / "rlq", backend="twin", **extra)  # type: ignore[call-arg]
    broker = SqliteBroker(settings.data_dir / "queue.sqlite3", clock=clock.epoch, lock_duration_s=60)
    return build(
        settings, compute={"twin": backend}, notifier=RecordingNotifier(), broker=broker, clock=clock
    )


def run(w: Wiring, request_id: str = "r", ticks: int = 8):
    w.service.accept(json.dumps({"request_id": request_id, "env": "CartPole-v1"}).encode(), message_id="m")
    for _ in range(ticks):
        w.service.poll_once()
    return w.store.get(request_id)


def published(w: Wiring) -> list[CompletionMessage]:
    s = w.settings
    return completions(w.broker.peek(s.topic_name, subscription=s.subscription_name, limit=100))


def test_a_lost_job_resumes_as_attempt_two_and_completes_once(tmp_path, clock):
    backend = ScriptedBackend({1: LOST})
    w = wire(tmp_path, clock, backend)
    rec = run(w)
    assert rec.state is RunState.notified and rec.completion.status == "Completed"
    assert rec.completion.attempts == 2
    assert dict(backend.submits) == {1: 1, 2: 1}  # one submit call per attempt
    [lost] = rec.attempts
    assert (lost.number, lost.run_id, lost.cause) == (1, "r-a1", LOST.error)
    assert lost.resumed_from == "file:///runs/r/checkpoints/iter_000006" and lost.steps_lost == 1000
    assert [m.message_id for m in published(w)] == ["r:completed"]


def test_more_losses_than_attempts_fail_naming_each_cause(tmp_path, clock):
    backend = ScriptedBackend({1: LOST, 2: LOST})
    w = wire(tmp_path, clock, backend, max_attempts=2)
    rec = run(w)
    assert rec.completion.status == "Failed" and rec.completion.attempts == 2
    assert rec.completion.error.startswith("lost its machines on all 2 attempts allowed")
    assert f"attempt 1: {LOST.error}; attempt 2: {LOST.error}" in rec.completion.error
    assert dict(backend.submits) == {1: 1, 2: 1} and len(rec.attempts) == 2
    assert [m.message_id for m in published(w)] == ["r:completed"]


@pytest.mark.parametrize("end", [JobEnd.training_failed, JobEnd.bad_request])
def test_a_training_failure_or_a_bad_request_is_never_retried(tmp_path, clock, end):
    backend = ScriptedBackend({1: JobStatus(state="failed", error="training failed (exit code 1)", end=end)})
    w = wire(tmp_path, clock, backend)
    rec = run(w)
    assert rec.completion.status == "Failed" and rec.completion.attempts == 1
    assert dict(backend.submits) == {1: 1} and rec.attempts == []


def test_a_crash_after_submitting_an_attempt_before_recording_it_never_submits_it_twice(tmp_path, clock):
    backend = ScriptedBackend({1: LOST})
    w = wire(tmp_path, clock, backend)
    real_submit = backend.submit
    crashed = []

    def crash_once(request: TrainingRequest, attempt: int = 1) -> str:
        run_id = real_submit(request, attempt)
        if attempt == 2 and not crashed:
            crashed.append(attempt)
            raise RuntimeError("rlq died after the submit of attempt 2, before recording it")
        return run_id

    backend.submit = crash_once  # type: ignore[method-assign]
    w.service.accept(json.dumps({"request_id": "r", "env": "CartPole-v1"}).encode(), message_id="m")
    for _ in range(8):
        w.service.poll_once()
        clock.advance(120)  # past the claim lease: the next tick takes the attempt over
    rec = w.store.get("r")
    assert crashed and rec.completion.status == "Completed" and rec.completion.attempts == 2
    assert dict(backend.submits) == {1: 1, 2: 1}


@pytest.mark.parametrize(
    ("code", "end"),
    [(0, JobEnd.stopped), (1, JobEnd.training_failed), (2, JobEnd.bad_request), (130, JobEnd.canceled),
     (143, JobEnd.canceled), (-9, JobEnd.lost), (137, JobEnd.lost), (-15, JobEnd.lost), (None, JobEnd.lost)],
)  # fmt: skip
def test_only_the_trainers_own_exits_are_its_own(code, end):
    assert end_of_exit(code) is end


def test_two_losses_in_a_row_resume_twice_and_complete_as_attempt_three(tmp_path, clock):
    backend = ScriptedBackend({1: LOST, 2: LOST})
    w = wire(tmp_path, clock, backend)  # RLQ_MAX_ATTEMPTS: 3 by default
    rec = run(w, ticks=10)
    assert rec.completion.status == "Completed" and rec.completion.attempts == 3
    assert dict(backend.submits) == {1: 1, 2: 1, 3: 1}
    assert [(a.number, a.run_id) for a in rec.attempts] == [(1, "r-a1"), (2, "r-a2")]
    assert rec.run_id == "r-a3" and [m.message_id for m in published(w)] == ["r:completed"]
