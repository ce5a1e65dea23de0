"""A real local Ray head for the Ray tests (token auth on), and a stand-in trainer package.

The head is started once per session by ``tests.support.ray_heads.start_test_ray_head`` (so
other test packages can start theirs the same way) and stopped at the end. The stand-in trainer
speaks the real trainer's contract (``--argv-from-env``, metrics.jsonl, summary.json,
``RLQ_METRICS`` / ``RLQ_SUMMARY`` lines, exit 143 on SIGTERM) in a second, and can be told
through ``config.seed`` to fail, to run until it is stopped, or to lose its first attempt: the
cancel / kill / failure / resume tests need a job that behaves exactly so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.compute.ray_jobs import RayJobsBackend
from shared.contracts.request import TrainingRequest
from shared.ports import JobStatus
from shared.settings import Settings
from tests.support.ray_heads import TestHead

# config.seed selects the stand-in's behaviour.
# STANDIN_LOST: a checkpoint at iteration 1, then SIGKILLs itself at iteration 2 unless it runs with
# --resume (a lost job: no trainer exit code); with --resume it goes on from the checkpoint.
STANDIN_OK, STANDIN_FAIL, STANDIN_HANG, STANDIN_LOST = 0, 1, 2, 3

STANDIN_TRAIN = r'''
"""Stand-in for trainer/train.py with the same command line and outputs."""
import argparse, json, os, signal, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
for flag in ("--run", "--env", "--config", "--stop", "--output-dir", "--checkpoint-freq", "--restore",
             "--evaluate-episodes", "--argv-from-env", "--seed", "--ray-address"):
    p.add_argument(flag)
p.add_argument("--evaluate-gif", action="store_true")
p.add_argument("--checkpoint-every-s")
p.add_argument("--resume", action="store_true")
args, _ = p.parse_known_args()  # flags the stand-in has no use for are ignored
if args.argv_from_env:
    args, _ = p.parse_known_args(json.loads(os.environ[args.argv_from_env]))
config, stop = json.loads(args.config), json.loads(args.stop)
out = Path(args.output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "pid").write_text(str(os.getpid()))
(out / "argv.json").write_text(os.environ.get("RLQ_TRAINER_ARGV", ""))
mode = config.get("seed", 0)
summary = {"algorithm": args.run, "env": args.env, "stop_reason": None, "final_reward": None,
           "best_reward": None, "iterations": 0, "timesteps": 0, "duration_s": 0.0,
           "checkpoint_path": None}

def finish(code, **extra):
    summary.update(extra)
    (out / "summary.json").write_text(json.dumps(summary))
    print("RLQ_SUMMARY " + json.dumps(summary), flush=True)
    sys.exit(code)

signal.signal(signal.SIGTERM, lambda *_: finish(143, stop_reason="canceled"))
it = 0
if args.resume:  # from the newest checkpoint's iteration, as the trainer does
    metas = [json.loads(m.read_text()) for m in out.glob("checkpoints/*/rlq_meta.json")]
    it = max((m["iteration"] for m in metas), default=0)
    summary["resumed_from"] = (out / "checkpoints" / f"iter_{it:06d}").resolve().as_uri() if metas else None
metrics = open(out / "metrics.jsonl", "a" if args.resume else "w")
while True:
    it += 1
    row = {"iteration": it, "time_total_s": 0.1 * it, "timesteps": 100 * it,
           "episode_reward_mean": 10.0 * it, "episodes_total": it}
    metrics.write(json.dumps(row) + "\n"); metrics.flush()
    print("RLQ_METRICS " + json.dumps(row), flush=True)
    summary.update(final_reward=row["episode_reward_mean"], best_reward=row["episode_reward_mean"],
                   iterations=it, timesteps=row["timesteps"])
    if mode == 1:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "train.py", line 1, in <module>', file=sys.stderr)
        print("ValueError: the stand-in was told to fail", file=sys.stderr, flush=True)
        finish(1, stop_reason="error", error="ValueError: the stand-in was told to fail")
    if mode == 3 and it == 1:
        ckpt = out / "checkpoints" / "iter_000001"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "rlq_meta.json").write_text(json.dumps({"iteration": 1, "timesteps": 100}))
    if mode == 3 and it == 2 and not args.resume:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode != 2 and it >= stop.get("training_iteration", 2):
        ckpt = out / "checkpoints" / "final"
        ckpt.mkdir(parents=True, exist_ok=True)
        finish(0, stop_reason="iterations_limit", checkpoint_path=ckpt.resolve().as_uri())
    time.sleep(0.2 if mode != 2 else 0.5)
'''


def write_standin(parent: Path) -> Path:
    """The stand-in trainer package (``trainer/``) under ``parent``, for a Ray backend's ``trainer_package``."""
    pkg = parent / "trainer"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(STANDIN_TRAIN)
    return pkg


@pytest.fixture(scope="session")
def standin_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_standin(tmp_path_factory.mktemp("standin"))


def head_settings(head: TestHead, **overrides: Any) -> Settings:
    """Local-mode settings that find the session's head (same data_dir, port and token)."""
    values: dict[str, Any] = {
        "data_dir": head.data_dir,
        "ray_dashboard_port": head.dashboard_port,
        "ray_auth_token": head.token,
        "ray_address": None,
        "status_timeout_s": 10.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def make_backend(ray_head: TestHead, standin_package: Path) -> Callable[..., RayJobsBackend]:
    """``make_backend(remote=False, real_trainer=False, **settings)``."""

    def make(*, remote: bool = False, real_trainer: bool = False, **overrides: Any) -> RayJobsBackend:
        settings = head_settings(ray_head, **overrides)
        return RayJobsBackend(
            address=ray_head.address if remote else None,
            settings=settings,
            trainer_package=None if real_trainer else standin_package,
        )

    return make


def make_request(*, seed: int = STANDIN_OK, **fields: Any) -> TrainingRequest:
    """A CartPole request with a unique request_id (the session's head keeps every job)."""
    body: dict[str, Any] = {
        "request_id": f"t-{uuid.uuid4().hex[:12]}",
        "algorithm": "IMPALA",
        "env": "CartPole-v1",
        "config": {"seed": seed},
        "stop": {"training_iteration": 2},
    }
    body.update(fields)
    return TrainingRequest.model_validate(body)


def wait_for(
    backend: RayJobsBackend, run_id: str, until: Callable[[JobStatus], bool], *, timeout_s: float = 90.0
) -> JobStatus:
    """Poll the job until ``until(status)`` holds (the job runs in another process: no clock to step)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = backend.status(run_id)
        if until(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_id} still {status.state} after {timeout_s:g} s: {status}")
        time.sleep(0.3)


def terminal(status: JobStatus) -> bool:
    return status.state in ("succeeded", "failed", "stopped")
