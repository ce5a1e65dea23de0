"""Map user ``--config`` / ``--stop`` JSON onto Ray 2.60 RLlib (new API stack) settings.

Everything here is a pure function over plain data so it can be validated *before* Ray
starts and unit-tested without Ray.

Two tables drive the config mapping:

* ``SETTINGS`` -- today's names the trainer accepts, with their type, allowed range,
  the ``AlgorithmConfig`` method that takes them and the algorithms they apply to.
* ``LEGACY`` -- article-era (RLlib 0.8 / old API stack) names: either the name of
  today's setting they became, a special mapping, or the reason they are ignored.

The stop criteria have their own table, ``STOP_KEYS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ALGORITHMS = ("IMPALA", "APPO", "PPO", "SAC", "DQN")
MAX_WORKERS = 1024


class UsageError(Exception):
    """A user mistake: printed as one line to stderr and exit code 2."""

    def __init__(self, field_name: str, value: Any, allowed: str, detail: str = "", message: str = ""):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        shown = _show(value)
        msg = message or f"{field_name}: {shown} is not allowed; expected {allowed}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


def _show(value: Any) -> str:
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------
# Value checkers. Each returns the (possibly normalised) value or raises UsageError.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    describe: str
    check: Callable[[Any], Any | None]  # returns normalised value, or None if bad

    def __call__(self, name: str, value: Any) -> Any:
        out = self.check(value)
        if out is None:
            raise UsageError(name, value, self.describe)
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def int_range(lo: int, hi: int) -> Kind:
    def check(v):
        if _is_int(v) and lo <= v <= hi:
            return v
        if isinstance(v, float) and v.is_integer() and lo <= v <= hi:
            return int(v)
        return None

    return Kind(f"an integer between {lo} and {hi}", check)


def num_range(lo: float, hi: float) -> Kind:
    def check(v):
        return float(v) if _is_num(v) and lo <= v <= hi else None

    return Kind(f"a number between {lo:g} and {hi:g}", check)


def num_or_schedule(lo: float, hi: float) -> Kind:
    """A number, or an RLlib schedule ``[[timestep, value], ...]`` (timestep 0 first)."""

    def check(v):
        if _is_num(v) and lo <= v <= hi:
            return float(v)
        if (
            isinstance(v, list)
            and v
            and all(
                isinstance(p, list)
                and len(p) == 2
                and _is_int(p[0])
                and p[0] >= 0
                and _is_num(p[1])
                and lo <= p[1] <= hi
                for p in v
            )
            and v[0][0] == 0
        ):
            return [[int(a), float(b)] for a, b in v]
        return None

    return Kind(f"a number between {lo:g} and {hi:g} or a schedule [[0, v0], [t1, v1], ...]", check)


def boolean() -> Kind:
    return Kind("true or false", lambda v: v if isinstance(v, bool) else None)


def choice(*options: Any) -> Kind:
    def check(v):
        return v if any(v == o and type(v) is type(o) for o in options) else None

    return Kind("one of " + ", ".join(_show(o) for o in options), check)


def int_list(lo: int = 1, hi: int = 65536, max_len: int = 16) -> Kind:
    def check(v):
        if isinstance(v, list) and 0 <= len(v) <= max_len and all(_is_int(x) and lo <= x <= hi for x in v):
            return list(v)
        return None

    return Kind(f"a list of at most {max_len} integers between {lo} and {hi}", check)


def conv_filters() -> Kind:
    def check(v):
        if v is None:
            return None
        if not isinstance(v, list) or not 1 <= len(v) <= 16:
            return None
        out = []
        for f in v:
            if not (isinstance(f, list) and len(f) in (3, 4) and _is_int(f[0]) and _is_int(f[2])):
                return None
            k = f[1]
            if _is_int(k):
                k = [k, k]
            if not (isinstance(k, list) and len(k) == 2 and all(_is_int(x) and x > 0 for x in k)):
                return None
            if len(f) == 4 and f[3] not in ("same", "valid"):
                return None
            out.append([f[0], k, f[2], *f[3:]])
        return out

    return Kind(
        'a list of [out_channels, [kernel_w, kernel_h], stride] filters, optionally with padding "same" or "valid"',
        check,
    )


ACTIVATIONS = ("tanh", "relu", "swish", "silu", "elu", "linear")
# The image networks' Learner forward (trainer/networks.py): "auto" is bfloat16 on a CPU that
# computes it natively (AMX or AVX512-BF16), float32 elsewhere.
LEARNER_PRECISIONS = ("auto", "float32", "bfloat16")
# torch.nn.init functions by the name RLlib's DefaultModelConfig takes (``*_kernel_initializer``).
INITIALIZERS = (
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "zeros_",
)
REPLAY_BUFFERS = ("EpisodeReplayBuffer", "PrioritizedEpisodeReplayBuffer")


def n_step() -> Kind:
    """SAC/DQN ``n_step``: an integer, or ``[lo, hi]`` (RLlib draws one per sampled batch)."""

    def check(v):
        if _is_int(v) and 1 <= v <= 100:
            return v
        if (
            isinstance(v, (list, tuple))
            and len(v) == 2
            and all(_is_int(x) for x in v)
            and 1 <= v[0] <= v[1] <= 100
        ):
            return (v[0], v[1])
        return None

    return Kind("an integer between 1 and 100 or a range [lo, hi] within it", check)


def replay_buffer() -> Kind:
    """RLlib's ``replay_buffer_config`` narrowed to its episode buffers, a bounded capacity and the
    prioritised buffer's alpha / beta (requests set ``replay_buffer_capacity``; presets the whole)."""

    def check(v):
        if not isinstance(v, dict) or v.get("type") not in REPLAY_BUFFERS:
            return None
        if not _is_int(v.get("capacity")) or not 1 <= v["capacity"] <= 2**22:
            return None
        if set(v) - {"type", "capacity", "alpha", "beta"}:
            return None
        if any(not (_is_num(v[k]) and 0 <= v[k] <= 10) for k in ("alpha", "beta") if k in v):
            return None
        return dict(v)

    return Kind(
        "an object {type: " + " | ".join(REPLAY_BUFFERS) + ", capacity: 1..4194304, alpha, beta}", check
    )


# --------------------------------------------------------------------------------------
# Today's settings (Ray 2.60, new API stack).
#   name -> (method on AlgorithmConfig, Kind, algorithms or None for all)
# Method "model" means a key of rl_module(model_config=...), "env" means a key of the
# env_config the trainer's env creator reads (trainer/envs.py), "special" means train.py
# handles it itself.
# --------------------------------------------------------------------------------------
_ALL = None
_ASYNC = ("IMPALA", "APPO")
_PPOISH = ("PPO", "APPO")
_REPLAY = ("SAC", "DQN")  # off-policy, from a replay buffer
_ON_POLICY = ("IMPALA", "APPO", "PPO")

SETTINGS: dict[str, tuple[str, Kind, tuple[str, ...] | None]] = {
    # env_runners()
    "num_env_runners": ("env_runners", int_range(0, MAX_WORKERS), _ALL),
    "num_envs_per_env_runner": ("env_runners", int_range(1, 1024), _ALL),
    "rollout_fragment_length": ("env_runners", int_range(1, 100_000), _ALL),
    "batch_mode": ("env_runners", choice("truncate_episodes", "complete_episodes"), _ALL),
    "num_cpus_per_env_runner": ("env_runners", num_range(0, 64), _ALL),
    "num_gpus_per_env_runner": ("env_runners", num_range(0, 8), _ALL),
    "sample_timeout_s": ("env_runners", num_range(1, 86_400), _ALL),
    "max_requests_in_flight_per_env_runner": ("env_runners", int_range(1, 64), _ALL),
    # learners()
    "num_learners": ("learners", int_range(0, 64), _ALL),
    "num_gpus_per_learner": ("learners", num_range(0, 8), _ALL),
    "num_cpus_per_learner": ("learners", num_range(0, 64), _ALL),
    "num_aggregator_actors_per_learner": ("learners", int_range(0, 64), _ASYNC),
    # training()
    "train_batch_size_per_learner": ("training", int_range(1, 10_000_000), _ALL),
    "minibatch_size": ("training", int_range(1, 10_000_000), _ALL),
    "num_epochs": ("training", int_range(1, 1000), _ALL),
    "lr": ("training", num_or_schedule(0.0, 1.0), _ALL),
    "gamma": ("training", num_range(0.0, 1.0), _ALL),
    "grad_clip": ("training", num_range(0.0, 1e6), _ALL),
    "grad_clip_by": ("training", choice("global_norm", "norm", "value"), _ALL),
    "entropy_coeff": ("training", num_or_schedule(0.0, 100.0), _ALL),
    "vf_loss_coeff": ("training", num_range(0.0, 1000.0), _ALL),
    "lambda_": ("training", num_range(0.0, 1.0), _PPOISH),
    "clip_param": ("training", num_range(0.0, 100.0), _PPOISH),
    "vf_clip_param": ("training", num_range(0.0, 1e6), ("PPO",)),
    "use_kl_loss": ("training", boolean(), _PPOISH),
    "kl_coeff": ("training", num_range(0.0, 100.0), _PPOISH),
    "kl_target": ("training", num_range(0.0, 100.0), _PPOISH),
    "use_gae": ("training", boolean(), ("PPO",)),
    "shuffle_batch_per_epoch": ("training", boolean(), ("PPO",)),
    "vtrace_clip_rho_threshold": ("training", num_range(0.0, 1000.0), _ASYNC),
    "vtrace_clip_pg_rho_threshold": ("training", num_range(0.0, 1000.0), _ASYNC),
    "learner_queue_size": ("training", int_range(1, 1024), _ASYNC),
    "broadcast_interval": ("training", int_range(1, 1000), _ASYNC),
    "timeout_s_sampler_manager": ("training", num_range(0.0, 3600.0), _ASYNC),
    "num_gpu_loader_threads": ("training", int_range(1, 64), _ASYNC),
    "target_network_update_freq": ("training", int_range(0, 10_000_000), ("APPO", *_REPLAY)),
    # SAC / DQN (RLlib's names; docs/trainer.md, "SAC and DQN")
    "replay_buffer_config": ("training", replay_buffer(), _REPLAY),
    "replay_buffer_capacity": ("replay", int_range(1, 2**22), _REPLAY),  # into replay_buffer_config
    "num_steps_sampled_before_learning_starts": ("training", int_range(0, 100_000_000), _REPLAY),
    "training_intensity": ("training", num_range(0.001, 10_000.0), _REPLAY),
    "n_step": ("training", n_step(), _REPLAY),
    "tau": ("training", num_range(0.0, 1.0), _REPLAY),
    "actor_lr": ("training", num_or_schedule(0.0, 1.0), ("SAC",)),
    "critic_lr": ("training", num_or_schedule(0.0, 1.0), ("SAC",)),
    "alpha_lr": ("training", num_or_schedule(0.0, 1.0), ("SAC",)),
    "initial_alpha": ("training", num_range(0.0, 100.0), ("SAC",)),
    "target_entropy": (
        "training",
        Kind('"auto" or a number', lambda v: v if v == "auto" else (float(v) if _is_num(v) else None)),
        ("SAC",),
    ),
    "double_q": ("training", boolean(), ("DQN",)),
    "dueling": ("training", boolean(), ("DQN",)),
    "epsilon": ("training", num_or_schedule(0.0, 1.0), ("DQN",)),
    "circular_buffer_num_batches": ("training", int_range(1, 1024), ("APPO",)),
    "circular_buffer_iterations_per_batch": ("training", int_range(1, 1024), ("APPO",)),
    # environment()
    "clip_rewards": (
        "environment",
        Kind(
            "true, false or a positive number",
            lambda v: v if isinstance(v, bool) else (float(v) if _is_num(v) and v > 0 else None),
        ),
        _ALL,
    ),
    # reporting()
    "min_time_s_per_iteration": ("reporting", num_range(0.0, 86_400), _ALL),
    "min_sample_timesteps_per_iteration": ("reporting", int_range(0, 100_000_000), _ALL),
    "metrics_num_episodes_for_smoothing": ("reporting", int_range(1, 100_000), _ALL),
    # debugging()
    "seed": ("debugging", int_range(0, 2**31 - 1), _ALL),
    "log_level": ("debugging", choice("DEBUG", "INFO", "WARN", "WARNING", "ERROR"), _ALL),
    # resources()
    "num_cpus_for_main_process": ("resources", num_range(0, 64), _ALL),
    # rl_module(model_config=...)
    "fcnet_hiddens": ("model", int_list(), _ALL),
    "fcnet_activation": ("model", choice(*ACTIVATIONS), _ALL),
    "conv_filters": ("model", conv_filters(), _ALL),
    "conv_activation": ("model", choice(*ACTIVATIONS), _ALL),
    "head_fcnet_hiddens": ("model", int_list(), _ALL),
    "head_fcnet_activation": ("model", choice(*ACTIVATIONS), _ALL),
    "fcnet_kernel_initializer": ("model", choice(*INITIALIZERS), _ALL),
    "fcnet_bias_initializer": ("model", choice(*INITIALIZERS), _ALL),
    "head_fcnet_kernel_initializer": ("model", choice(*INITIALIZERS), _ALL),
    "head_fcnet_kernel_initializer_kwargs": (
        "model",
        Kind(
            "an object {gain: a number}",
            lambda v: v if isinstance(v, dict) and set(v) == {"gain"} and _is_num(v["gain"]) else None,
        ),
        _ALL,
    ),
    "head_fcnet_bias_initializer": ("model", choice(*INITIALIZERS), _ALL),
    "vf_share_layers": ("model", boolean(), _ALL),
    "use_lstm": ("model", boolean(), _ALL),
    "lstm_cell_size": ("model", int_range(1, 8192), _ALL),
    "max_seq_len": ("model", int_range(1, 10_000), _ALL),
    "learner_precision": ("model", choice(*LEARNER_PRECISIONS), _ON_POLICY),
    # env_config for trainer/envs.py (Atari preprocessing; ignored for classic control)
    "dim": ("env", int_range(10, 256), _ALL),
    "framestack": ("env", int_range(1, 16), _ALL),
    "frameskip": ("env", int_range(1, 16), _ALL),
    "noop_max": ("env", int_range(1, 1000), _ALL),
    "repeat_action_probability": ("env", num_range(0.0, 1.0), _ALL),
    "max_episode_steps": ("env", int_range(1, 10_000_000), _ALL),
}

# Article-era / old-API-stack names.
#   ("rename", today's name, note)   -> value moved to today's name
#   ("special", handler name, note)  -> handled by code below
#   ("ignore", reason)               -> no meaning today; logged and dropped
LEGACY: dict[str, tuple[str, ...]] = {
    "num_workers": ("rename", "num_env_runners", ""),
    "num_envs_per_worker": ("rename", "num_envs_per_env_runner", ""),
    "num_cpus_per_worker": ("rename", "num_cpus_per_env_runner", ""),
    "num_gpus_per_worker": ("rename", "num_gpus_per_env_runner", ""),
    "num_cpus_for_driver": ("rename", "num_cpus_for_main_process", ""),
    "sample_batch_size": ("rename", "rollout_fragment_length", "RLlib renamed it in 0.8.x"),
    "train_batch_size": ("rename", "train_batch_size_per_learner", "per Learner on the new API stack"),
    "num_sgd_iter": ("rename", "num_epochs", ""),
    "sgd_minibatch_size": ("rename", "minibatch_size", ""),
    "lambda": ("rename", "lambda_", ""),
    "min_iter_time_s": ("rename", "min_time_s_per_iteration", ""),
    "min_time_s_per_reporting": ("rename", "min_time_s_per_iteration", ""),
    "timesteps_per_iteration": ("rename", "min_sample_timesteps_per_iteration", ""),
    "metrics_smoothing_episodes": ("rename", "metrics_num_episodes_for_smoothing", ""),
    "metrics_num_episodes_for_smoothing": ("rename", "metrics_num_episodes_for_smoothing", ""),
    "num_gpus": (
        "special",
        "num_gpus",
        "learner GPUs: <= 1 -> num_gpus_per_learner of the one Learner; "
        "n > 1 -> num_learners=n, num_gpus_per_learner=1",
    ),
    "model": ("special", "model", "model sub-keys go to rl_module(model_config=...)"),
    "env_config": ("special", "env_config", "Atari preprocessing settings"),
    "num_data_loader_buffers": (
        "ignore",
        "old API stack IMPALA multi-GPU tower buffers; the new API stack "
        "Learner loads batches itself (see num_gpu_loader_threads)",
    ),
    "num_multi_gpu_tower_stacks": (
        "ignore",
        "old API stack only; the new API stack Learner has no tower stacks",
    ),
    "minibatch_buffer_size": ("ignore", "old API stack only"),
    "replay_proportion": ("ignore", "mixin replay is not supported by IMPALA/APPO on the new API stack"),
    "replay_buffer_num_slots": (
        "ignore",
        "mixin replay is not supported by IMPALA/APPO on the new API stack",
    ),
    "learner_queue_timeout": ("ignore", "old API stack only"),
    "opt_type": ("ignore", "the new API stack Learner always uses Adam"),
    "decay": ("ignore", "RMSProp setting; the new API stack Learner always uses Adam"),
    "momentum": ("ignore", "RMSProp setting; the new API stack Learner always uses Adam"),
    "epsilon": ("ignore", "RMSProp setting; the new API stack Learner always uses Adam"),
    "framework": ("ignore", "the trainer always uses PyTorch"),
    "eager": ("ignore", "TensorFlow-only setting; the trainer always uses PyTorch"),
    "horizon": ("ignore", "episode length is set by the environment's TimeLimit (use max_episode_steps)"),
    "soft_horizon": ("ignore", "removed from RLlib; episodes are truncated by the environment"),
    "no_done_at_end": ("ignore", "removed from RLlib; episodes are truncated by the environment"),
    "monitor": ("ignore", "use `python -m trainer.evaluate --gif` for recordings"),
    "callbacks": ("ignore", "the trainer logs metrics itself (metrics.jsonl, Azure ML, MLflow)"),
    "num_aggregation_workers": ("ignore", "deprecated; see num_aggregator_actors_per_learner"),
    "vtrace": ("ignore", "V-trace is always on for IMPALA/APPO in Ray 2.60"),
    "lr_schedule": ("ignore", "use a schedule value for lr: [[0, lr0], [t1, lr1]]"),
    "entropy_coeff_schedule": ("ignore", "use a schedule value for entropy_coeff: [[0, c0], [t1, c1]]"),
    "observation_filter": ("ignore", "old API stack only (use a connector on the new stack)"),
    "compress_observations": ("ignore", "old API stack only"),
    "preprocessor_pref": ("ignore", "Atari preprocessing is done by the trainer's env creator"),
}

# model.<key> (old model config dict).
MODEL_LEGACY: dict[str, tuple[str, ...]] = {
    "dim": ("rename", "dim", "Atari frames are resized to dim x dim by the env creator"),
    "framestack": ("special", "framestack", "frame stacking is done by the env creator (4 frames)"),
    "grayscale": ("ignore", "frames are always grayscaled"),
    "zero_mean": ("ignore", "frames are always normalised to [-1, 1]"),
    "fcnet_hiddens": ("rename", "fcnet_hiddens", ""),
    "fcnet_activation": ("rename", "fcnet_activation", ""),
    "conv_filters": ("rename", "conv_filters", ""),
    "conv_activation": ("rename", "conv_activation", ""),
    "post_fcnet_hiddens": ("rename", "head_fcnet_hiddens", ""),
    "post_fcnet_activation": ("rename", "head_fcnet_activation", ""),
    "head_fcnet_hiddens": ("rename", "head_fcnet_hiddens", ""),
    "head_fcnet_activation": ("rename", "head_fcnet_activation", ""),
    "vf_share_layers": ("rename", "vf_share_layers", ""),
    "use_lstm": ("rename", "use_lstm", ""),
    "lstm_cell_size": ("rename", "lstm_cell_size", ""),
    "max_seq_len": ("rename", "max_seq_len", ""),
    "free_log_std": ("ignore", "only for continuous actions; not exposed by the trainer"),
    "custom_model": ("ignore", "custom models are not accepted from a request"),
    "custom_model_config": ("ignore", "custom models are not accepted from a request"),
}

ENV_CONFIG_KEYS = (
    "dim",
    "framestack",
    "frameskip",
    "noop_max",
    "repeat_action_probability",
    "max_episode_steps",
)


@dataclass
class MappedConfig:
    """Result of mapping a user config: today's names only."""

    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line per mapped/ignored name


def _set(out: MappedConfig, name: str, value: Any, source: str, algorithm: str) -> None:
    _method, kind, algos = SETTINGS[name]
    value = kind(source, value)
    if algos is not None and algorithm not in algos:
        raise UsageError(
            source,
            value,
            f"a setting of {', '.join(algos)} (not {algorithm})",
            f"{name} does not apply to {algorithm}",
        )
    out.settings[name] = value


def map_config(user: Any, algorithm: str) -> MappedConfig:  # noqa: C901 - one branch per --config key family, read as one table
    """Validate and map a user ``--config`` dict. Raises ``UsageError`` on a bad field."""
    if not isinstance(user, dict):
        raise UsageError("--config", user, "a JSON object")
    out = MappedConfig()
    for key, value in user.items():
        src = f"--config.{key}"
        # epsilon: DQN's exploration schedule today, RMSProp's epsilon in the article's era
        if key in SETTINGS and (key not in LEGACY or (key == "epsilon" and algorithm == "DQN")):
            _set(out, key, value, src, algorithm)
            continue
        if key not in LEGACY:
            raise UsageError(
                src, value, "a known setting", f"unknown key {key!r}; accepted: " + _accepted_summary()
            )
        entry = LEGACY[key]
        if entry[0] == "rename":
            _set(out, entry[1], value, src, algorithm)
            if entry[1] != key:
                note = f" ({entry[2]})" if entry[2] else ""
                out.notes.append(
                    f"config: {key}={_show(value)} -> {entry[1]}={_show(out.settings[entry[1]])}{note}"
                )
        elif entry[0] == "ignore":
            out.notes.append(f"config: {key}={_show(value)} ignored: {entry[1]}")
        elif entry[1] == "num_gpus":
            n = num_range(0, 64)(src, value)
            if n <= 1:
                out.settings["num_gpus_per_learner"] = n
                out.notes.append(
                    f"config: num_gpus={_show(value)} -> num_gpus_per_learner={n:g} "
                    f"(one Learner: IMPALA/APPO remote, PPO in the driver)"
                )
            else:
                if not float(n).is_integer():
                    raise UsageError(src, value, "a number <= 1 or a whole number of GPUs")
                out.settings["num_learners"] = int(n)
                out.settings["num_gpus_per_learner"] = 1.0
                out.notes.append(
                    f"config: num_gpus={_show(value)} -> num_learners={int(n)}, num_gpus_per_learner=1"
                )
        elif entry[1] == "model":
            _map_model(out, value, algorithm)
        elif entry[1] == "env_config":
            if not isinstance(value, dict):
                raise UsageError(src, value, "a JSON object with keys " + ", ".join(ENV_CONFIG_KEYS))
            for k, v in value.items():
                if k not in ENV_CONFIG_KEYS:
                    raise UsageError(f"{src}.{k}", v, "one of the keys " + ", ".join(ENV_CONFIG_KEYS))
                _set(out, k, v, f"{src}.{k}", algorithm)
    return out


def _map_model(out: MappedConfig, value: Any, algorithm: str) -> None:
    if not isinstance(value, dict):
        raise UsageError("--config.model", value, "a JSON object")
    for key, v in value.items():
        src = f"--config.model.{key}"
        if key not in MODEL_LEGACY:
            raise UsageError(src, v, "a known model setting", "accepted: " + ", ".join(sorted(MODEL_LEGACY)))
        entry = MODEL_LEGACY[key]
        if entry[0] == "rename":
            _set(out, entry[1], v, src, algorithm)
            where = "env creator" if SETTINGS[entry[1]][0] == "env" else "model_config"
            note = f" ({entry[2]})" if entry[2] else ""
            out.notes.append(f"config: model.{key}={_show(v)} -> {where}.{entry[1]}{note}")
        elif entry[0] == "ignore":
            out.notes.append(f"config: model.{key}={_show(v)} ignored: {entry[1]}")
        else:  # framestack: bool in the old model config
            if not isinstance(v, bool):
                raise UsageError(src, v, "true or false")
            out.settings["framestack"] = 4 if v else 1
            out.notes.append(f"config: model.framestack={_show(v)} -> env creator framestack={4 if v else 1}")


def _accepted_summary() -> str:
    names = sorted(set(SETTINGS) | set(LEGACY))
    return ", ".join(names)


def default_num_env_runners(num_cpus: float) -> int:
    """Seed rule: all CPUs Ray sees minus one for the head/driver process, at least 1.

    On a 2-core machine this gives 1 EnvRunner; the Learner (IMPALA/APPO: one remote Learner
    actor, PPO: the driver) uses the second core.
    """
    return max(1, min(MAX_WORKERS, int(num_cpus) - 1))


# --------------------------------------------------------------------------------------
# Stop criteria.
# --------------------------------------------------------------------------------------
STOP_REASONS = ("reward_reached", "time_limit", "timesteps_limit", "iterations_limit")

#   user key -> (canonical key, reason, kind, note)
STOP_KEYS: dict[str, tuple[str, str, Kind]] = {
    "episode_reward_mean": ("episode_reward_mean", "reward_reached", num_range(-1e9, 1e9)),
    "env_runners/episode_return_mean": ("episode_reward_mean", "reward_reached", num_range(-1e9, 1e9)),
    "episode_return_mean": ("episode_reward_mean", "reward_reached", num_range(-1e9, 1e9)),
    "time_total_s": ("time_total_s", "time_limit", num_range(0, 30 * 86_400)),
    "timesteps_total": ("timesteps", "timesteps_limit", int_range(1, 10**12)),
    "num_env_steps_sampled_lifetime": ("timesteps", "timesteps_limit", int_range(1, 10**12)),
    "env_runners/num_env_steps_sampled_lifetime": ("timesteps", "timesteps_limit", int_range(1, 10**12)),
    "training_iteration": ("training_iteration", "iterations_limit", int_range(1, 10**9)),
}


def map_stop(user: Any) -> dict[str, float]:
    """Validate ``--stop`` and return {canonical key: threshold}."""
    if not isinstance(user, dict):
        raise UsageError("--stop", user, "a JSON object")
    out: dict[str, float] = {}
    for key, value in user.items():
        if key not in STOP_KEYS:
            raise UsageError(f"--stop.{key}", value, "a known stop key", "accepted: " + ", ".join(STOP_KEYS))
        canon, _reason, kind = STOP_KEYS[key]
        v = kind(f"--stop.{key}", value)
        if canon in out and out[canon] != v:
            raise UsageError(f"--stop.{key}", value, f"the same value as the other {canon} key")
        out[canon] = v
    return out


_REASON = {
    "episode_reward_mean": "reward_reached",
    "time_total_s": "time_limit",
    "timesteps": "timesteps_limit",
    "training_iteration": "iterations_limit",
}


def check_stop(stop: dict[str, float], row: dict[str, Any]) -> str | None:
    """Return the stop reason met by a metrics row (reward first), or None."""
    r = row.get("episode_reward_mean")
    if "episode_reward_mean" in stop and r is not None and r >= stop["episode_reward_mean"]:
        return "reward_reached"
    if "timesteps" in stop and row.get("timesteps", 0) >= stop["timesteps"]:
        return "timesteps_limit"
    if "training_iteration" in stop and row.get("iteration", 0) >= stop["training_iteration"]:
        return "iterations_limit"
    if "time_total_s" in stop and row.get("time_total_s", 0) >= stop["time_total_s"]:
        return "time_limit"
    return None
