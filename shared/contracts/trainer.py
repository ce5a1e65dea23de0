"""The trainer contract, rlq's side: how a request becomes the trainer's command line, and what the
trainer prints back.

Everything a compute backend needs to start ``trainer/train.py`` and read its progress lives here,
so a request means the same run on a local Ray head, a remote Ray cluster and Azure ML:

* :data:`ARGV_ENV`: the argument vector travels as a JSON list in this environment variable and
  the trainer reads it back with ``--argv-from-env`` (nothing is ever joined into a shell string:
  Ray runs its entrypoint through a shell, so the entrypoint is a constant, :data:`ENTRYPOINT`);
* :func:`build_argv`: the one argv builder (each value is one argv element), and
  :func:`seed_cluster_config`: the seed's worker and GPU counts for a cluster;
* :func:`trainer_time_budget_s`: the training time every run is given (``--stop time_total_s``);
* :data:`CHECKPOINT_FREQ`: iterations between checkpoints;
* :data:`METRICS_MARK` / :data:`SUMMARY_MARK`: the stdout line prefixes of one iteration's metrics
  and of the final summary, which backends that only see job logs parse;
* :class:`TrainerSummary`: that summary (``summary.json``) as a backend hands it to the core, typed
  once here (:meth:`TrainerSummary.read`) instead of read key by key where it is used.

``trainer/`` never imports ``shared/`` (it is uploaded alone as an Azure ML snapshot / Ray working
dir), so it keeps its own copy of its side of this contract: the markers in ``trainer/metrics.py``
and the algorithm names in ``trainer/config_map.py``. ``tests/contract/test_trainer_contract.py`` checks
that both sides agree.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts.models import Evaluation
from shared.contracts.request import TrainingRequest

ARGV_ENV = "RLQ_TRAINER_ARGV"
# Constant on purpose: no request field may ever reach a shell. ``exec``: the shell Ray runs it in
# becomes the trainer, so the job's driver is the trainer itself: a driver killed is a trainer
# gone, never one left training behind a job Ray reports ended (and its run resumed beside it).
ENTRYPOINT = f"exec python -m trainer.train --argv-from-env {ARGV_ENV}"
CHECKPOINT_FREQ = 10
# The first reset seed of the model comparison's episodes (trainer/evaluate.py MODEL_EVAL_SEED).
MODEL_EVAL_SEED = 1_000_000
CHECKPOINT_EVERY_S = 300  # a checkpoint after this many seconds of training too (``--checkpoint-every-s``)
METRICS_MARK = "RLQ_METRICS "
SUMMARY_MARK = "RLQ_SUMMARY "

log = logging.getLogger(__name__)

__all__ = [
    "ARGV_ENV",
    "CHECKPOINT_EVERY_S",
    "CHECKPOINT_FREQ",
    "ENTRYPOINT",
    "METRICS_MARK",
    "MODEL_EVAL_SEED",
    "SUMMARY_MARK",
    "TRAINER_EXITS",
    "JobEnd",
    "ModelEval",
    "TrainerSummary",
    "build_argv",
    "end_of_exit",
    "seed_cluster_config",
    "trainer_time_budget_s",
]


class JobEnd(StrEnum):
    """How a job ended, as its backend tells the core (:attr:`shared.ports.JobStatus.end`).

    The trainer's own exits say what it decided (:data:`TRAINER_EXITS`); a job that ended any
    other way — its driver killed by a signal or for memory, its node or head lost, Ray's job
    supervisor gone, Azure ML preempting its node — was lost with its machines: ``lost``, the one
    end the core resumes from the run's last checkpoint. A training failure or a request the
    trainer refused is never retried.
    """

    stopped = "stopped"  # a stop criterion was met (exit 0)
    training_failed = "training_failed"  # exit 1: summary.json says why
    bad_request = "bad_request"  # exit 2: the trainer refused its arguments
    canceled = "canceled"  # exit 143 (SIGTERM) or 130 (SIGINT): the trainer stopped on a cancel
    lost = "lost"  # any other end: the infrastructure went away under the job


# The trainer's own exit codes (trainer/train.py's docstring; tests/contract checks both agree).
TRAINER_EXITS: dict[int, JobEnd] = {
    0: JobEnd.stopped,
    1: JobEnd.training_failed,
    2: JobEnd.bad_request,
    130: JobEnd.canceled,
    143: JobEnd.canceled,
}


def end_of_exit(exit_code: int | None) -> JobEnd:
    """The end a job's exit code means: the trainer's own, else ``lost`` (a signal's negative
    code, 137 for an out-of-memory kill, no code at all when the driver or its node vanished)."""
    if exit_code is None:
        return JobEnd.lost
    return TRAINER_EXITS.get(exit_code, JobEnd.lost)


def trainer_time_budget_s(
    request: TrainingRequest, *, default_run_duration_s: int, max_run_duration_s: int
) -> int:
    """The training time the trainer itself is given (``--stop time_total_s``), in seconds.

    The request's ``compute.max_run_duration_s``, else the deployment's default, never above the
    cap, and never above the request's own ``stop.time_total_s``. The trainer stops itself at this
    budget and reports ``time_limit``; the service's watchdog
    (``shared.core.poller.Poller.limit_s``) allows more before it cancels a job that overran.
    """
    bound = min(request.compute.max_run_duration_s or default_run_duration_s, max_run_duration_s)
    if request.stop.time_total_s is not None:
        bound = min(bound, request.stop.time_total_s)
    return int(bound)


def seed_cluster_config(config: dict[str, Any], *, total_cpus: int, head_gpus: int) -> dict[str, Any]:
    """``config`` with the seed's cluster defaults where the request sets none (Azure ML backends).

    ``num_workers``: every CPU of the head and the workers minus one for the head process;
    ``num_gpus``: the head's GPUs. A request that names either (or today's equivalents) keeps its own.
    """
    out = dict(config)
    if "num_workers" not in out and "num_env_runners" not in out:
        out["num_workers"] = max(total_cpus - 1, 0)
    if not {"num_gpus", "num_gpus_per_learner", "num_learners"} & out.keys():
        out["num_gpus"] = head_gpus
    return out


def build_argv(
    request: TrainingRequest,
    *,
    output_dir: str,
    checkpoint_freq: int = CHECKPOINT_FREQ,
    config: dict[str, Any] | None = None,
    time_budget_s: int | None = None,
    restore: str | None = None,
    env_module: str | None = None,
    ray_address: str | None = None,
    checkpoint_every_s: int = CHECKPOINT_EVERY_S,
    resume: bool = False,
    champion: str | None = None,
) -> list[str]:
    """``--run … --env … --config … --stop … --output-dir …`` and the optional flags.

    ``config`` defaults to the request's own (a backend passes it when it adds to it: the seed's
    worker count); ``time_budget_s`` (see :func:`trainer_time_budget_s`) replaces the request's
    ``stop.time_total_s``; ``env_module`` the catalogued module that registers the request's
    environment (:meth:`shared.contracts.environments.EnvironmentCatalog.entry_for`); ``restore`` is a path the job can read; ``resume`` (a later attempt of
    a run whose job was lost) starts from the output dir's newest checkpoint that loads.
    """
    config = request.config if config is None else config
    stop = request.stop.model_dump(exclude_none=True)
    if time_budget_s is not None:
        stop["time_total_s"] = int(time_budget_s)
    argv = [
        "--run",
        request.algorithm,
        "--env",
        request.env,
        "--config",
        json.dumps(config, sort_keys=True, separators=(",", ":")),
        "--stop",
        json.dumps(stop, sort_keys=True, separators=(",", ":")),
        "--output-dir",
        output_dir,
        *(["--ray-address", ray_address] if ray_address else []),
        "--checkpoint-freq",
        str(int(checkpoint_freq)),
        "--checkpoint-every-s",
        str(int(checkpoint_every_s)),
    ]
    if resume:
        argv.append("--resume")
    if restore:
        argv += ["--restore", restore]
    if request.env_config:
        argv += ["--env-config", json.dumps(request.env_config, sort_keys=True, separators=(",", ":"))]
    if env_module:  # the catalog entry's module (the operator's), never a request's
        argv += ["--env-module", env_module]
    if request.evaluate is not None:
        argv += ["--evaluate-episodes", str(request.evaluate.episodes)]
        if request.evaluate.gif:
            argv.append("--evaluate-gif")
    # The model comparison (docs/models.md): every run plays its final checkpoint on the same
    # greedy episodes, and the champion's checkpoint on them too when the model has one.
    argv += ["--model-eval-episodes", str(request.eval_episodes)]
    if request.champion is not None:
        argv += ["--champion-version", str(request.champion.version)]
        if champion:  # a path the job reads; Azure ML mounts it as a job input instead
            argv += ["--champion", champion]
    return argv


class ModelEval(BaseModel):
    """``summary.json``'s ``model_eval``: what ``trainer/evaluate.py`` ``compare`` played."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    candidate: Evaluation | None = None  # the run's final checkpoint
    champion: Evaluation | None = None  # the champion's checkpoint, on the same episodes
    champion_version: int | None = None  # the version ``--champion-version`` named
    error: str | None = None  # why an evaluation is missing


class TrainerSummary(BaseModel):
    """The trainer's ``summary.json`` (``trainer/metrics.py`` ``new_summary``), as a backend read it.

    Every field may be missing: a job that died early wrote none, a backend that saw only part of
    it (Azure ML: run metrics plus the artifact) fills in what it has. Keys the core does not use
    (the trainer's timings) are ignored. ``simulated`` is set by the compute twin alone: nothing
    was trained and the figures are made up.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    algorithm: str | None = None
    env: str | None = None
    stop_reason: str | None = None
    error: str | None = None
    final_reward: float | None = None
    best_reward: float | None = None
    iterations: int | None = None
    timesteps: int | None = None
    duration_s: float | None = None
    checkpoint_path: str | None = None
    eval_reward: float | None = None
    replay_path: str | None = None
    # The model comparison (``--model-eval-episodes``): the candidate and the champion on the same
    # greedy episodes; None when the trainer made none (an older trainer, a run that did not end well).
    model_eval: ModelEval | None = None
    simulated: bool = Field(False, strict=True)  # only a JSON true marks a made-up run

    @classmethod
    def read(cls, data: object) -> TrainerSummary | None:
        """A summary from what a backend found (a decoded JSON object), or None when it found none.

        A value of the wrong type (a trainer of another version, a damaged file) is dropped with a
        warning instead of failing the poll: the completion then falls back to the run's progress.
        """
        if not isinstance(data, dict):
            return None
        fields = {k: v for k, v in data.items() if k in cls.model_fields and v is not None}
        while True:
            try:
                return cls.model_validate(fields)
            except ValidationError as err:
                bad = {str(e["loc"][0]) for e in err.errors() if e["loc"]}
                log.warning("trainer summary: ignoring %s (not of the expected type)", ", ".join(sorted(bad)))
                if not bad & fields.keys():
                    raise
                fields = {k: v for k, v in fields.items() if k not in bad}
