"""Real faults on Ray, seen through the service: a trainer killed mid-training, a head that dies
while runs are active. The poller must restart the head, report each run correctly and keep going.

These run on a private head of their own: a SIGKILLed driver leaves its actors to Ray's cleanup,
and neither the session's shared head nor a later test should have to wait for that (the
restart test runs first; the kill test last).

What the job trains does not change how rlq reads its end, so the head restart and the kill with no
attempt left run the stand-in trainer (``tests/ray/conftest.py``, until it is stopped) and start in
seconds; the kill while a checkpoint is written runs the real trainer, whose checkpoints it needs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from shared.composition import build
from shared.contracts.completion import CompletionMessage
from shared.contracts.run import RunState
from shared.localhost.ray_head import head_pids, probe_dashboard, ray_psutil, stop_local_head
from shared.settings import Settings
from tests.ray.conftest import STANDIN_HANG, write_standin
from tests.support.ray_heads import start_test_ray_head
from tests.support.topics import completions
from trainer.run import HOLD_ENV

pytestmark = pytest.mark.ray

# the stand-in runs until it is stopped (or SIGKILLed)
LONG = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "config": {"seed": STANDIN_HANG},
    "stop": {"time_total_s": 600},
}


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
    return completions(w.broker.peek(s.topic_name, subscription=s.subscription_name, limit=100))


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
    """The head, and the file that holds a trainer's checkpoint before its rename while it exists
    (``trainer.run.HOLD_ENV``, in the environment of the head and of any head the poller restarts)."""
    hold = tmp_path_factory.mktemp("hold") / "hold"
    before = os.environ.get(HOLD_ENV)
    os.environ[HOLD_ENV] = str(hold)
    head = start_test_ray_head(tmp_path_factory.mktemp("fault-head"), num_cpus=2)
    try:
        yield head
    finally:
        stop_local_head(data_dir=head.data_dir)
        if before is None:
            os.environ.pop(HOLD_ENV, None)
        else:
            os.environ[HOLD_ENV] = before


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return write_standin(tmp_path_factory.mktemp("standin"))


def with_standin(settings: Settings, package: Path):
    """The service on ``settings``, its Ray jobs running the stand-in trainer ``package``."""
    from shared.adapters.compute.ray_jobs import RayJobsBackend

    return build(
        settings, compute={"ray": RayJobsBackend(address=None, settings=settings, trainer_package=package)}
    )


@pytest.mark.timeout(600)
def test_a_head_that_dies_under_active_runs_is_restarted_and_its_runs_resumed(
    private_head, standin, tmp_path
):
    """Every process of the local head SIGKILLed mid-run: the next poll starts a new head (the
    poller, not a person) and the run it held resumes there as attempt 2, its first attempt
    recorded as lost because the cluster was restarted."""
    head = private_head
    # the service runs on the head's own data dir, as `rlq serve` does: the head it restarts is that
    # one (and the fixture stops it), not a second head for another data dir
    w = with_standin(settings_for(head, tmp_path, data_dir=head.data_dir), standin)
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
    rec = wait_until(w, "orphan", lambda r: r.attempt == 2 and r.run_id is not None, timeout_s=180)
    assert "restarted" in rec.attempts[0].cause and rec.run_id.endswith("-a2")
    w.service.cancel("orphan")
    rec = wait_until(w, "orphan", lambda r: r.state is RunState.notified, timeout_s=180)
    assert rec.completion.status == "Canceled" and rec.completion.attempts == 2
    assert [m.message_id for m in published(w)] == ["orphan:completed"]
    assert probe_dashboard(head.address, head.token) == 200  # the new head
    assert not set(head_pids(head.data_dir)) & old


@pytest.mark.timeout(600)
def test_a_trainer_killed_with_no_attempt_left_fails_with_a_readable_reason(private_head, standin, tmp_path):
    w = with_standin(settings_for(private_head, tmp_path, max_attempts=1), standin)
    w.service.accept(json.dumps({**LONG, "request_id": "killed"}).encode(), message_id="k")
    wait_until(w, "killed", running_with_progress, timeout_s=240)
    os.kill(trainer_process("killed").pid, signal.SIGKILL)
    rec = wait_until(w, "killed", lambda r: r.state is RunState.notified, timeout_s=120)
    assert rec.completion.status == "Failed" and rec.completion.stop_reason == "error"
    assert "killed" in rec.completion.error and "Traceback" not in rec.completion.error
    assert rec.completion.error.startswith("lost its machines on all 1 attempts allowed")
    assert [m.message_id for m in published(w)] == ["killed:completed"]


@pytest.mark.timeout(600)
def test_a_trainer_killed_while_writing_a_checkpoint_resumes_from_the_one_before_and_completes_once(
    private_head, tmp_path
):
    """The job's driver SIGKILLed mid-training while it writes a checkpoint (held, written in full,
    under its ``.partial-`` name): the half-written one is never "the latest", so attempt 2 resumes
    from the one before under its own submission id, the counters go on from there, at most one
    checkpoint interval of timesteps is lost (read from metrics.jsonl), and one completion goes
    out, saying 2 attempts."""
    from shared.adapters.compute.ray_jobs import submission_id_for
    from tests.support.ray_submits import record_submit_jobs, submit_job_calls

    journal = tmp_path / "submits.jsonl"
    undo = record_submit_jobs(journal)
    try:
        w = build(settings_for(private_head, tmp_path, checkpoint_every_s=1))  # one per iteration
        request = {
            "env": "CartPole-v1",
            "algorithm": "PPO",
            # an iteration of a second or more (4,000 steps as 1,000 vectorised steps of 4 envs,
            # RLlib's cost being per vectorised step): a checkpoint after each
            "config": {"train_batch_size": 4000, "num_envs_per_env_runner": 4},
            "stop": {"training_iteration": 7},
        }
        w.service.accept(json.dumps({**request, "request_id": "resumed"}).encode(), message_id="r")
        out = w.settings.runs_dir / "resumed"
        wait_until(
            w, "resumed", lambda r: len(list((out / "checkpoints").glob("iter_*"))) >= 2, timeout_s=300
        )
        hold = Path(os.environ[HOLD_ENV])
        hold.touch()  # the next checkpoint waits, written, before its rename
        try:
            wait_until(w, "resumed", lambda r: half_written(out), timeout_s=120)
            [partial] = half_written(out)
            half_iteration = json.loads((partial / "rlq_meta.json").read_text())["iteration"]
            killed = kill_driver("resumed")  # every process of the job's driver: nothing goes on training
            # the whole checkpoints at the kill: one per second of training, so an iteration that
            # took less than that has none and "the one before" need not be half_iteration - 1
            whole = sorted(int(c.name.rsplit("_", 1)[1]) for c in (out / "checkpoints").glob("iter_*"))
        finally:
            hold.unlink()
        rows_at_kill = metrics_rows(out)
        rec = wait_until(w, "resumed", lambda r: r.state is RunState.notified, timeout_s=400)
    finally:
        undo()
    assert len(killed) == 1  # the driver is the trainer (no shell left between them to outlive it)
    assert rec.completion.status == "Completed" and rec.completion.attempts == 2, rec
    assert rec.completion.iterations == 7
    assert [m.message_id for m in published(w)] == ["resumed:completed"]
    base = submission_id_for("resumed")
    assert submit_job_calls(journal) == {base: 1, f"{base}-a2": 1}  # one submit call per attempt
    [lost] = rec.attempts
    # the checkpoint rlq recorded is the one attempt 2's trainer loaded: the one before the half-written one
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == lost.resumed_from
    checkpoint_iteration = int(lost.resumed_from.rsplit("_", 1)[1])
    assert partial.name == f".partial-iter_{half_iteration:06d}"
    assert checkpoint_iteration == whole[-1] < half_iteration  # the newest whole one, not the half-written
    assert not half_written(out)  # attempt 2 wrote that checkpoint again, whole, and renamed it
    rows = metrics_rows(out)
    after = rows[len(rows_at_kill) :]
    assert after[0]["iteration"] == checkpoint_iteration + 1  # the counters go on from the checkpoint
    checkpoint_row = next(r for r in rows_at_kill if r["iteration"] == checkpoint_iteration)
    assert after[0]["timesteps"] > checkpoint_row["timesteps"]
    steps_lost = rows_at_kill[-1]["timesteps"] - checkpoint_row["timesteps"]
    half_row = next(r for r in rows_at_kill if r["iteration"] == half_iteration)
    assert (
        steps_lost <= half_row["timesteps"] - checkpoint_row["timesteps"]
    )  # at most one checkpoint interval
    assert lost.steps_lost is not None and lost.steps_lost <= steps_lost  # what rlq saw of them


def half_written(out: Path) -> list[Path]:
    """Checkpoints being written: complete but for their rename."""
    return [p.parent for p in (out / "checkpoints").glob(".partial-*/rlq_meta.json")]


def metrics_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def kill_driver(request_id: str) -> list[int]:
    """SIGKILL every process of the request's job driver (the entrypoint's shell and the trainer),
    then wait until they are gone."""
    psutil = ray_psutil()
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "trainer.train" in " ".join(proc.info["cmdline"] or []) and request_id in proc.environ().get(
                "RLQ_TRAINER_ARGV", ""
            ):
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=30)
    return [p.pid for p in procs]
