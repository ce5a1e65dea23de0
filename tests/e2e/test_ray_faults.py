"""Real faults on Ray, seen through the service: a trainer killed mid-training, a head that dies
while runs are active. The poller must restart the head, report each run correctly and keep going.

These run on a private head of their own: a SIGKILLed driver leaves its actors to Ray's cleanup,
and neither the session's shared head nor a later test should have to wait for that (the
restart test runs first; the kill test last)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from shared.adapters.ray_local import head_pids, probe_dashboard, ray_psutil, stop_local_head
from shared.composition import build
from shared.contracts.completion import CompletionMessage
from shared.contracts.run import RunState
from shared.settings import Settings
from tests.support.ray_heads import start_test_ray_head

pytestmark = pytest.mark.ray

LONG = {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"time_total_s": 600}}


def wait_until(w, request_id: str, until, *, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        w.service.poll_once()
        rec = w.store.get(request_id)
        if until(rec):
            return rec
        time.sleep(0.5)
    raise AssertionError(f"{request_id}: condition not met in {timeout_s} s: {w.store.get(request_id)}")


def running_with_progress(rec) -> bool:
    return rec.state is RunState.running and rec.progress is not None


def published(w) -> list[CompletionMessage]:
    s = w.settings
    return [
        CompletionMessage.model_validate_json(m.body)
        for m in w.broker.peek(s.topic_name, subscription=s.subscription_name, limit=100)
    ]


def trainer_process(request_id: str):
    """The trainer the Ray job started for this request (its argv travels in its environment)."""
    psutil = ray_psutil()  # Ray's bundled copy
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "trainer.train" in " ".join(proc.info["cmdline"] or []) and request_id in proc.environ().get(
                "RLQ_TRAINER_ARGV", ""
            ):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no trainer process for {request_id}")


def settings_for(head, tmp_path, **extra) -> Settings:
    extra.setdefault("data_dir", tmp_path / "rlq")
    return Settings(
        _env_file=None,
        backend="ray",  # type: ignore[call-arg]
        ray_dashboard_port=head.dashboard_port,
        ray_auth_token=head.token,
        **extra,
    )


@pytest.fixture(scope="module")
def private_head(tmp_path_factory):
    head = start_test_ray_head(tmp_path_factory.mktemp("fault-head"), num_cpus=2)
    yield head
    stop_local_head(data_dir=head.data_dir)


@pytest.mark.timeout(600)
def test_a_head_that_dies_under_active_runs_is_restarted_and_its_runs_reported(private_head, tmp_path):
    """Every process of the local head SIGKILLed mid-run: the next poll starts a new head (the
    poller, not a person) and the run it held ends Failed, saying the cluster was restarted."""
    head = private_head
    # the service runs on the head's own data dir, as `rlq serve` does: the head it restarts is that
    # one (and the fixture stops it), not a second head for another data dir
    w = build(settings_for(head, tmp_path, data_dir=head.data_dir))
    w.service.accept(json.dumps({**LONG, "request_id": "orphan"}).encode(), message_id="o")
    wait_until(w, "orphan", running_with_progress, timeout_s=240)
    old = set(head_pids(head.data_dir))
    for pid in old:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while set(head_pids(head.data_dir)) & old and time.monotonic() < deadline:
        time.sleep(0.5)
    assert probe_dashboard(head.address, head.token) is None
    rec = wait_until(w, "orphan", lambda r: r.state is RunState.notified, timeout_s=180)
    assert rec.completion.status == "Failed"
    assert "restarted" in rec.completion.error
    assert [m.message_id for m in published(w)] == ["orphan:completed"]
    assert probe_dashboard(head.address, head.token) == 200  # the new head
    assert not set(head_pids(head.data_dir)) & old


@pytest.mark.timeout(600)
def test_a_trainer_killed_mid_training_fails_with_a_readable_reason(private_head, tmp_path):
    w = build(settings_for(private_head, tmp_path))
    w.service.accept(json.dumps({**LONG, "request_id": "killed"}).encode(), message_id="k")
    wait_until(w, "killed", running_with_progress, timeout_s=240)
    os.kill(trainer_process("killed").pid, signal.SIGKILL)
    rec = wait_until(w, "killed", lambda r: r.state is RunState.notified, timeout_s=120)
    assert rec.completion.status == "Failed" and rec.completion.stop_reason == "error"
    assert "killed" in rec.completion.error and "Traceback" not in rec.completion.error
    assert [m.message_id for m in published(w)] == ["killed:completed"]
