"""The whole flow on one machine: the real function_app.py under the local host, the SQLite queue
and store, a real local Ray head (token auth on) and the real trainer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.adapters.compute.ray_jobs import submission_id_for
from shared.composition import build, install
from shared.contracts.completion import CompletionMessage
from shared.contracts.run import RunState
from shared.localhost import LocalHost
from tests.e2e.conftest import subprocess_env
from tests.support.topics import completions

pytestmark = pytest.mark.ray

CARTPOLE = {"env": "CartPole-v1", "algorithm": "IMPALA"}


def drive(host: LocalHost, w, request_id: str, *, timeout_s: float, until=None) -> None:
    """What the host does on its timers, stepped from the test until the run is notified."""
    until = until or (lambda rec: rec.state is RunState.notified and rec.notified_at is not None)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        host.drain()
        host.tick_timers()
        host.drain()
        rec = w.store.get(request_id)
        if rec is not None and until(rec):
            return
        time.sleep(0.5)
    raise AssertionError(f"{request_id} not done after {timeout_s} s: {w.store.get(request_id)}")


def topic(w) -> list[CompletionMessage]:
    """Completion messages seen by a second subscriber of the topic (the notifier has its own)."""
    return completions(w.broker.peek(w.settings.topic_name, subscription="audit", limit=100))


@pytest.fixture
def local(e2e_settings):
    def make(**extra):
        w = build(e2e_settings(**extra))
        w.broker.create_subscription(w.settings.topic_name, "audit")
        return w, LocalHost.for_wiring(w)

    yield make
    install(None)


def ray_jobs(w, request_id: str) -> list:
    backend = w.compute["ray"]
    return [j for j in backend._client().list_jobs() if j.submission_id == submission_id_for(request_id)]


@pytest.mark.timeout(1200)
def test_request_to_completion_once_even_when_enqueued_twice(local):
    w, host = local()
    body = {
        **CARTPOLE,
        "request_id": "e2e-cartpole",
        # the learning budget is in environment steps, not seconds: a busy machine takes longer,
        # it does not learn less (IMPALA passes 150 well inside it; time_total_s only bounds a hang)
        "stop": {"episode_reward_mean": 150, "timesteps_total": 500_000, "time_total_s": 900},
    }
    w.broker.send(w.settings.queue_name, json.dumps(body), message_id="first")
    w.broker.send(w.settings.queue_name, json.dumps(body), message_id="second")  # same request, new message
    drive(host, w, "e2e-cartpole", timeout_s=1000)
    assert len(ray_jobs(w, "e2e-cartpole")) == 1
    (msg,) = topic(w)
    assert msg.status == "Completed" and msg.stop_reason == "reward_reached"
    assert msg.final_reward >= 150 and msg.message_id == "e2e-cartpole:completed"
    checkpoint = Path(msg.checkpoint_path.removeprefix("file://"))
    assert checkpoint.is_dir()
    out = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--checkpoint", msg.checkpoint_path, "--episodes", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RLQ_EVAL" in out.stdout
    assert (w.settings.runs_dir / "e2e-cartpole" / "metrics.jsonl").is_file()


@pytest.mark.timeout(600)
def test_killed_between_submit_and_record_starts_no_second_job(e2e_head, tmp_path):
    data_dir = tmp_path / "rlq"
    body = {**CARTPOLE, "request_id": "e2e-crash", "stop": {"training_iteration": 2}}
    env = subprocess_env(e2e_head, data_dir, RLQ_LOCK_DURATION_S=4)
    driver = [sys.executable, "-m", "tests.e2e.host_driver", "e2e-crash"]
    w = build(_settings_from(env))
    w.broker.create_subscription(w.settings.topic_name, "audit")  # what the world saw, never consumed
    w.broker.send(w.settings.queue_name, json.dumps(body), message_id="only")
    crashed = subprocess.run(
        [*driver, "120"], check=False, env={**env, "RLQ_FAULT_AT": "submitted"}, timeout=180
    )
    assert crashed.returncode == -signal.SIGKILL
    rec = w.store.get("e2e-crash")
    assert (
        rec.state is RunState.provisioning and rec.run_id is None
    )  # the job exists; the record does not know
    assert len(ray_jobs(w, "e2e-crash")) == 1
    done = subprocess.run([*driver, "240"], check=False, env=env, timeout=300)
    assert done.returncode == 0
    rec = w.store.get("e2e-crash")
    assert rec.completion.status == "Completed" and rec.run_id == submission_id_for("e2e-crash")
    assert len(ray_jobs(w, "e2e-crash")) == 1
    msgs = w.broker.peek(w.settings.topic_name, subscription=w.settings.subscription_name, limit=10)
    assert len(w.broker.dead_letters(w.settings.queue_name)) == 0 and len(msgs) == 0  # notifier consumed it
    assert [m.message_id for m in topic(w)] == ["e2e-crash:completed"]  # published exactly once
    assert rec.notified_at is not None


def _settings_from(env: dict[str, str]):
    from shared.settings import Settings

    values = {k.removeprefix("RLQ_").lower(): v for k, v in env.items() if k.startswith("RLQ_")}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.timeout(600)
def test_cancel_of_a_running_request_stops_the_ray_job(local):
    w, host = local()
    body = {**CARTPOLE, "request_id": "e2e-cancel", "stop": {"time_total_s": 600}}
    w.broker.send(w.settings.queue_name, json.dumps(body), message_id="c")
    drive(
        host,
        w,
        "e2e-cancel",
        timeout_s=240,
        until=lambda rec: rec.state is RunState.running and rec.progress is not None,
    )
    resp = host.handle_http("POST", "/api/trainings/e2e-cancel/cancel", {}, b"")
    assert resp.status_code == 202
    drive(host, w, "e2e-cancel", timeout_s=120)
    (msg,) = topic(w)
    assert msg.status == "Canceled" and msg.stop_reason == "canceled"
    (job,) = ray_jobs(w, "e2e-cancel")
    assert str(job.status) in ("STOPPED", "JobStatus.STOPPED")
