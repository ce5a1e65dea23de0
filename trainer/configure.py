"""From a plan and the Ray cluster it runs on to an RLlib algorithm config.

:func:`start_ray` joins or starts the cluster; :class:`Cluster` is what the run reads of it;
:func:`resolve_settings` merges the preset, the request, the placement and the default number of
EnvRunners; :func:`check_resources` refuses what the cluster can never place; :func:`algo_config`
builds the ``AlgorithmConfig`` and :func:`place` pins its actors to the nodes
``trainer/bootstrap.py`` started. Ray, torch and RLlib are imported inside the functions: the
arguments are checked before any of them loads.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import bootstrap, config_map, presets
from trainer.config_map import UsageError
from trainer.console import log
from trainer.metrics import SMOOTHING_EPISODES
from trainer.plan import Plan

TRAINER_DIR = Path(__file__).resolve().parent
REPO_ROOT = str(TRAINER_DIR.parent)
ALGORITHM_CONFIGS = {
    "IMPALA": ("ray.rllib.algorithms.impala", "IMPALAConfig"),
    "APPO": ("ray.rllib.algorithms.appo", "APPOConfig"),
    "PPO": ("ray.rllib.algorithms.ppo", "PPOConfig"),
    "SAC": ("ray.rllib.algorithms.sac", "SACConfig"),
    "DQN": ("ray.rllib.algorithms.dqn", "DQNConfig"),
}
ENV_RUNNER_RESTART_DELAY_S = 10.0  # between an EnvRunner's failure and its replacement
# The AlgorithmConfig methods that take a section of the settings as keyword arguments, in order.
PLAIN_SECTIONS = ("env_runners", "learners", "training")


def start_ray(plan: Plan) -> Any:
    """``ray.init`` for this plan: join ``--ray-address`` / ``RAY_ADDRESS``, or start a local cluster."""
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    address = plan.ray_address or os.environ.get("RAY_ADDRESS")
    if plan.ray_address:
        kwargs["address"] = plan.ray_address
    inside_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    if address and not inside_job:
        # Joining a cluster whose workers may not have this code (e.g. Azure ML workers):
        # ship the trainer package with the job so env creators can be imported.
        kwargs["runtime_env"] = {"py_modules": [str(TRAINER_DIR)]}
    elif not address:
        _prepare_local_workers()
    ray.init(**kwargs)
    return ray


def _prepare_local_workers() -> None:
    # A local cluster started here: make sure worker processes can import `trainer`.
    pythonpath = os.environ.get("PYTHONPATH", "")
    if REPO_ROOT not in pythonpath.split(os.pathsep):
        os.environ["PYTHONPATH"] = REPO_ROOT + (os.pathsep + pythonpath if pythonpath else "")
    # Ray starts worker processes at niceness 15; here the EnvRunner actors are the
    # workload, not background work: on a busy machine they starved behind every other
    # process while the Learner (in this process, niceness 0) waited for their samples.
    os.environ.setdefault("RAY_worker_niceness", "0")


def import_framework(algorithm: str) -> None:
    """torch and the algorithm's RLlib modules: the driver's largest start-up cost of its own."""
    import torch  # noqa: F401

    importlib.import_module(f"ray.rllib.algorithms.{algorithm.lower()}")


@dataclass(frozen=True)
class Cluster:
    cpus: float
    gpus: float
    # A cluster started by trainer/bootstrap.py: Learner on the head node, EnvRunners on workers.
    placement: dict[str, Any] | None

    @classmethod
    def of(cls, ray: Any) -> Cluster:
        resources = ray.cluster_resources()
        return cls(
            cpus=float(resources.get("CPU", 1)),
            gpus=float(resources.get("GPU", 0)),
            placement=bootstrap.placement(ray.nodes()),
        )


def resolve_settings(plan: Plan, cluster: Cluster) -> dict[str, Any]:
    """The preset for this cluster, the request's settings over it, then the number of EnvRunners."""
    preset_settings = presets.preset(
        plan.algorithm, plan.env_id, plan.atari, cluster.gpus, image=plan.image_obs
    )
    settings = {**preset_settings, **plan.mapped.settings}
    fitted = presets.fit_minibatch(plan.algorithm, preset_settings, settings, plan.mapped.settings)
    if fitted:
        log(f"config: {fitted}")
    if "num_env_runners" not in settings and cluster.placement and cluster.placement.get("worker_cpus"):
        settings["num_env_runners"] = cluster.placement["worker_cpus"]
        log(f"config: num_env_runners={settings['num_env_runners']} (the worker nodes' CPUs)")
    if "num_env_runners" not in settings:
        settings["num_env_runners"] = config_map.default_num_env_runners(cluster.cpus)
        log(
            f"config: num_env_runners={settings['num_env_runners']} "
            f"(default: {cluster.cpus:g} CPUs in the Ray cluster minus one)"
        )
    fitted = presets.fit_fragment(plan.algorithm, settings, plan.mapped.settings)
    if fitted:
        log(f"config: {fitted}")
    return settings


def check_resources(settings: dict[str, Any], cluster: Cluster, algorithm: str) -> None:
    """Refuse a request the cluster can never place (Ray would wait forever for it)."""
    runners = settings.get("num_env_runners", 0)
    cpus_per_runner = settings.get("num_cpus_per_env_runner", 1)
    learners = settings.get("num_learners", default_num_learners(algorithm))
    gpu_per_learner = settings.get("num_gpus_per_learner", 0)
    learner_cpus = learners * settings.get("num_cpus_per_learner", 0 if gpu_per_learner else 1)
    if runners * cpus_per_runner + learner_cpus > cluster.cpus:
        most = int(max(0, cluster.cpus - learner_cpus) // max(cpus_per_runner, 1e-9))
        raise UsageError(
            "--config.num_workers",
            runners,
            f"at most {most} EnvRunners (the Ray cluster has {cluster.cpus:g} CPUs"
            + (f" and {learners} remote Learner(s) take {learner_cpus:g})" if learner_cpus else ")"),
        )
    need_gpu = max(learners, 1) * gpu_per_learner
    if need_gpu > cluster.gpus:
        raise UsageError("--config.num_gpus", need_gpu, f"at most {cluster.gpus:g} (GPUs in the Ray cluster)")


def default_num_learners(algorithm: str) -> int:
    # IMPALA/APPO default to one remote Learner actor in Ray 2.60, PPO to the local one.
    return 1 if algorithm in ("IMPALA", "APPO") else 0


def set_torch_threads(plan: Plan, settings: dict[str, Any]) -> None:
    """Intra-op threads of the driver process (the local Learner and, with 0 EnvRunners, the
    sampler). Tiny MLPs are fastest on one thread; with more threads on a busy 2-core machine
    one Adam step of a 64x64 MLP went from 0.45 ms to 21 ms. Atari: the cores the EnvRunners
    leave free on this machine. RLQ_TORCH_THREADS overrides. (Ray sets OMP_NUM_THREADS for
    EnvRunner actors itself.)"""
    import torch

    override = os.environ.get("RLQ_TORCH_THREADS")
    if override and override.isdigit() and int(override) > 0:
        threads = int(override)
    elif not plan.atari or settings.get("num_gpus_per_learner"):
        threads = 1
    else:
        local = os.cpu_count() or 1
        remote = plan.ray_address or os.environ.get("RAY_ADDRESS")
        threads = max(1, local // 2) if remote else max(1, local - settings.get("num_env_runners", 0))
    torch.set_num_threads(threads)
    log(f"torch intra-op threads in the driver: {threads}")


def algo_config(plan: Plan, settings: dict[str, Any], env_name: str, env_config: dict[str, Any]) -> Any:
    """The RLlib ``AlgorithmConfig`` (torch, new API stack) for these settings; not built yet."""
    module, class_name = ALGORITHM_CONFIGS[plan.algorithm]
    config = getattr(importlib.import_module(module), class_name)().framework("torch")
    sections = _sections(settings)
    if sections.get("replay"):  # replay_buffer_capacity: into the preset's replay_buffer_config
        training = sections.setdefault("training", {})
        buffer = dict(training.get("replay_buffer_config") or {"type": "EpisodeReplayBuffer"})
        buffer["capacity"] = sections["replay"]["replay_buffer_capacity"]
        training["replay_buffer_config"] = buffer
    environment = sections.get("environment", {})
    if plan.discrete_actions:
        # RLlib's NormalizeAndClipActions connector would deep-copy every vectorised step's actions
        # to rescale or clip them, which does nothing to Discrete ones (in a CartPole PPO profile,
        # a fifth of the connectors' time and 4 % of an iteration; docs/trainer.md).
        environment = {"normalize_actions": False, "clip_actions": False, **environment}
    config.environment(env_name, env_config=env_config, **environment)
    if plan.atari:  # each EnvRunner's envs as one vector env: ale_py's, in C++ (envs.make_vector_env)
        config.env_runners(gym_env_vectorize_mode="vector_entry_point")
    for method in PLAIN_SECTIONS:
        if sections.get(method):
            getattr(config, method)(**sections[method])
    if sections.get("model"):
        config.rl_module(model_config=sections["model"])
    _trainer_classes(config, plan, settings)
    config.reporting(
        **{"metrics_num_episodes_for_smoothing": SMOOTHING_EPISODES, **sections.get("reporting", {})}
    )
    debugging = sections.get("debugging", {})
    if plan.seed is not None:
        debugging["seed"] = plan.seed
    if debugging:
        config.debugging(**debugging)
    if sections.get("resources"):
        config.resources(**sections["resources"])
    if not env_runner_state_server(plan, settings):
        config.use_env_runner_state_server = False
    # An EnvRunner killed (or lost with its worker node) is replaced without ending the job: the
    # others sample on meanwhile, and RLlib starts a new one after the delay (its default is 60 s).
    config.fault_tolerance(
        restart_failed_env_runners=True, delay_between_env_runner_restarts_s=ENV_RUNNER_RESTART_DELAY_S
    )
    return config


def _trainer_classes(config: Any, plan: Plan, settings: dict[str, Any]) -> None:
    """RLlib's own classes where the trainer has a faster equal: the image network's module
    (``networks``) and the on-policy Learners (``learners``: Adam fused, one finiteness check; SAC
    and DQN keep theirs). ``config.learners(learner_class=)``: Ray 2.60 deprecates the
    ``training`` spelling."""
    from trainer import learners, networks

    module_class = networks.MODULE_CLASSES.get(plan.algorithm)
    if "conv_filters" in settings and module_class is not None:  # an image network
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        config.rl_module(rl_module_spec=RLModuleSpec(module_class=module_class))
    learner_class = learners.LEARNER_CLASSES.get(plan.algorithm)
    if learner_class is not None:
        config.learners(learner_class=learner_class)


def _sections(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings grouped by the AlgorithmConfig method that takes them (``config_map.SETTINGS``)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in settings.items():
        sections.setdefault(config_map.SETTINGS[name][0], {})[name] = value
    return sections


def env_runner_state_server(plan: Plan, settings: dict[str, Any]) -> bool:
    """Whether IMPALA/APPO keep RLlib's pull-based ``EnvRunnerStateServer`` (default on in 2.60).

    Off for classic control with at most one EnvRunner: the server is one more actor process
    (a full RLlib import, about 5 CPU seconds) started after the Learner, and the first sample
    waits for it; for one EnvRunner RLlib's push sync (``set_state`` after each weight update,
    asynchronous) hands over the same weights without it. Atari runs keep RLlib's default."""
    if plan.algorithm not in ("IMPALA", "APPO") or plan.atari:
        return True
    return settings.get("num_env_runners", 0) > 1


def place(config: Any, placement: dict[str, Any] | None) -> None:
    """Pin the actors to the nodes ``trainer/bootstrap.py`` started: Learner on the head, EnvRunners on workers."""
    if not placement:
        return
    if "custom_resources_per_env_runner" in placement:
        config.env_runners(custom_resources_per_env_runner=placement["custom_resources_per_env_runner"])
    if "custom_resources_per_learner" in placement:
        config.learners(custom_resources_per_learner=placement["custom_resources_per_learner"])
    log("placement: Learner on the rlq_head node, EnvRunners on rlq_worker nodes")
