"""Environment creators for the trainer (used by the driver, Ray EnvRunners and evaluation).

Every creator imports ``ale_py`` and registers its environments itself, because it runs in
Ray worker processes that never executed the driver's imports.

Atari games get the standard DeepMind-style preprocessing, built from RLlib's Atari wrappers
(``_wrap_atari``): grayscale frames from the emulator, max over the last two of every 4 frames
(action repeat 4), resize to ``dim`` x ``dim`` (84 by default, ``model.dim`` in the article;
the presets use 42), normalise to [-1, 1], up to 30 no-op starts, episodic life, FIRE on
reset, and a stack of the last 4 frames *inside the env*
(observation shape ``(dim, dim, 4)``). Frame stacking happens in the env rather than in an
env-to-module connector, so evaluation only has to use the same creator to see exactly the
observations the policy was trained on.

An EnvRunner asks for its envs all at once (RLlib's vector entry point, set by
``configure.algo_config`` for Atari): ``make_vector_env`` gives ale_py's ``AtariVectorEnv``,
which does the same preprocessing in C++ with no Python per emulator frame (the Pong preset's
16 envs: 1.26x the env steps per CPU second, ``bench/trainer_throughput.py --only a``).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

ENV_PREFIX = "rlq/"
ATARI_DEFAULTS = {"dim": 84, "framestack": 4, "frameskip": 4, "noop_max": 30}


def _register_ale() -> None:
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)


def env_spec(env_id: str):
    """Return the gymnasium EnvSpec for ``env_id`` or None when it is not registered."""
    import gymnasium

    _register_ale()
    try:
        return gymnasium.spec(env_id)
    except Exception:  # noqa: BLE001 - gymnasium raises several error types for unknown ids
        return None


def is_atari(env_id: str) -> bool:
    spec = env_spec(env_id)
    if spec is None:
        return False
    ep = (
        spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
    )
    return "ale_py" in str(ep)


def is_mujoco(env_id: str) -> bool:
    """One of gymnasium's MuJoCo robots (HalfCheetah-v5, ...): its own PPO and SAC presets."""
    spec = env_spec(env_id)
    ep = "" if spec is None else spec.entry_point
    ep = ep if isinstance(ep, str) else getattr(ep, "__module__", "")
    return str(ep).startswith("gymnasium.envs.mujoco")


def _mujoco_warnings_to_stderr() -> None:
    """MuJoCo appends its warnings to MUJOCO_LOG.TXT in the working directory (the repository, a
    job's working dir) unless a handler takes them: here each is one line on stderr."""
    import sys

    import mujoco  # type: ignore[import-untyped]  # mujoco ships no type stubs or py.typed

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(lambda text: print(f"mujoco: {text}", file=sys.stderr))


def import_env_module(module: str) -> None:
    """Import the catalogued module whose import registers its environments with gymnasium."""
    import importlib

    importlib.import_module(module)


def registered_by(module: str) -> list[str]:
    """The env ids whose entry point lives in ``module``'s package (after it was imported)."""
    top = module.split(".")[0]
    out = []
    for env_id, spec in gym.registry.items():
        ep = (
            spec.entry_point
            if isinstance(spec.entry_point, str)
            else getattr(spec.entry_point, "__module__", "")
        )
        if str(ep).split(":")[0].split(".")[0] == top:
            out.append(env_id)
    return sorted(out)


# What the trainer's networks take (docs/environments.md, "Spaces"): observations a Box (an image of
# rank 3, else a vector, flattened) or anything gymnasium flattens into one (Discrete, MultiDiscrete,
# MultiBinary, Dict and Tuple of those: one-hot and concatenated); actions Discrete, MultiDiscrete
# or a rank-1 Box.
FLATTENED_OBS = (
    gym.spaces.Discrete,
    gym.spaces.MultiDiscrete,
    gym.spaces.MultiBinary,
    gym.spaces.Dict,
    gym.spaces.Tuple,
)
ACTION_SPACES = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Box)


def space_problem(observation_space: gym.Space, action_space: gym.Space) -> str | None:
    """Why the trainer cannot train on these spaces (naming the space), or None."""
    if not _flattenable(observation_space):
        return f"observation space {observation_space} is not supported; supported: Box, Discrete, MultiDiscrete, MultiBinary, and Dict / Tuple of them"
    if not isinstance(action_space, ACTION_SPACES) or (
        isinstance(action_space, gym.spaces.Box) and len(action_space.shape) != 1
    ):
        return (
            f"action space {action_space} is not supported; supported: Discrete, MultiDiscrete, Box of rank 1"
        )
    return None


# The actions each algorithm acts in on RLlib 2.60's new API stack, where it is not all of
# ACTION_SPACES: DQN's Q-network has one output per action of a Discrete space; SAC's catalog
# (ray/rllib/algorithms/sac/sac_catalog.py) builds heads for a Box or a Discrete space only.
# Intake refuses the built-in ids it knows (shared/contracts/environments.py ACTION_KINDS).
ALGORITHM_ACTIONS: dict[str, tuple[type[gym.Space], ...]] = {
    "DQN": (gym.spaces.Discrete,),
    "SAC": (gym.spaces.Box, gym.spaces.Discrete),
}


def algorithm_problem(algorithm: str, env_id: str, action_space: gym.Space) -> str | None:
    """Why ``algorithm`` cannot act in this environment's action space (naming both), or None."""
    allowed = ALGORITHM_ACTIONS.get(algorithm)
    if allowed is None or isinstance(action_space, allowed):
        return None
    others = [a for a, spaces in ALGORITHM_ACTIONS.items() if isinstance(action_space, spaces)]
    fits = ", ".join(["IMPALA", "APPO", "PPO", *others])
    return (
        f"--run {algorithm} cannot train --env {env_id}: {algorithm} takes "
        f"{' or '.join(t.__name__ for t in allowed)} actions, {env_id}'s action space is {action_space}; "
        f"algorithms for it: {fits}"
    )


def _flattenable(space: gym.Space) -> bool:
    if isinstance(space, gym.spaces.Dict):
        return all(_flattenable(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return all(_flattenable(s) for s in space.spaces)
    return isinstance(space, (gym.spaces.Box, *FLATTENED_OBS))


def is_image(space: gym.Space) -> bool:
    """An image observation (rank 3 Box, height x width x channels): the CNN preset."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


def is_discrete(space: gym.Space) -> bool:
    """Actions with nothing to rescale or clip on their way to the env (Discrete, MultiDiscrete)."""
    return isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete))


def prepare(env):
    """The env as the networks see it: any observation but an image or a vector Box flattened
    (gymnasium's FlattenObservation: Discrete one-hot, Dict / Tuple concatenated), as float32."""
    space = env.observation_space
    if not _flattenable(space):
        return env  # probe() refuses it, naming the space
    if isinstance(space, FLATTENED_OBS) or (
        isinstance(space, gym.spaces.Box) and len(space.shape) not in (1, 3)
    ):
        env = gym.wrappers.FlattenObservation(env)
    if env.observation_space.dtype != np.float32:  # RLlib's torch networks take float32 (one-hots are int64)
        env = gym.wrappers.DtypeObservation(env, np.float32)
    return env


class Probed(NamedTuple):
    """What the trainer's probe saw: the observation space the networks will see, and the
    action space the policy acts in."""

    observation_space: gym.Space
    action_space: gym.Space


def probe(env_id: str, module: str | None, kwargs: dict[str, Any], algorithm: str = "") -> Probed:
    """Build the environment once with the request's keyword arguments, before Ray starts.

    A constructor that rejects a key or a value, or a space the trainer cannot train, raises
    :class:`trainer.config_map.UsageError` (exit 2) with the environment's own message."""
    from trainer.config_map import UsageError

    try:
        env = make_env({"env_id": env_id, "env_module": module, "env_kwargs": kwargs})
    except Exception as exc:  # noqa: BLE001 - whatever the constructor raises is the request's mistake
        message = str(exc).split(" was raised from the environment creator")[0]
        raise UsageError(
            "--env-config", kwargs, "", message=f"--env-config: {type(exc).__name__}: {message}"
        ) from None
    try:
        problem = space_problem(env.unwrapped.observation_space, env.action_space)
        if problem:
            raise UsageError("--env", env_id, "", message=f"--env: {env_id}: {problem}")
        problem = algorithm_problem(algorithm, env_id, env.action_space)
        if problem:
            raise UsageError("--run", algorithm, "", message=problem)
        return Probed(env.observation_space, env.action_space)
    finally:
        env.close()


def make_env(env_config: dict[str, Any]):
    """Module-level env creator: ``env_config["env_id"]`` plus Atari preprocessing options.

    Used through ``ray.tune.registry.register_env`` (see ``register``) and directly by
    ``trainer.evaluate``.
    """
    import gymnasium as gym

    _register_ale()
    cfg = dict(env_config or {})
    env_id = cfg["env_id"]
    if cfg.get("env_module"):  # a catalogued package: this process may never have imported it
        import_env_module(cfg["env_module"])
    if "num_envs" in cfg:  # RLlib's vector entry point (gym_env_vectorize_mode "vector_entry_point")
        return make_vector_env(cfg)
    render_mode: str | None = cfg.get("render_mode")
    kwargs: dict[str, Any] = dict(cfg.get("env_kwargs") or {})  # the request's env_config
    if render_mode:
        kwargs["render_mode"] = render_mode
    if is_atari(env_id):
        opts = {**ATARI_DEFAULTS, **{k: cfg[k] for k in ATARI_DEFAULTS if k in cfg}}
        # The wrappers do the frame skipping (max over the last 2 frames), so the
        # emulator itself must not skip ("ALE/*-v5" ids skip 4 by default). The emulator
        # renders grayscale itself (rendering still gives RGB frames).
        kwargs["frameskip"] = 1
        kwargs["obs_type"] = "grayscale"
        if "repeat_action_probability" in cfg:
            kwargs["repeat_action_probability"] = cfg["repeat_action_probability"]
        env = _wrap_atari(gym.make(env_id, **kwargs), opts)
        if "max_episode_steps" in cfg:
            env = gym.wrappers.TimeLimit(env, max_episode_steps=cfg["max_episode_steps"])
        return env
    if "max_episode_steps" in cfg:
        kwargs["max_episode_steps"] = cfg["max_episode_steps"]
    if is_mujoco(env_id):
        _mujoco_warnings_to_stderr()
        if render_mode:  # a node has no display: render offscreen through EGL unless told otherwise
            os.environ.setdefault("MUJOCO_GL", "egl")
    return prepare(gym.make(env_id, **kwargs))


# make_env's options that only the one-env path has: with any of them the vector entry point
# steps ``num_envs`` of make_env's envs one after the other, as RLlib's default "sync" mode does.
_ONE_ENV_ONLY = ("render_mode", "env_kwargs", "max_episode_steps")


def make_vector_env(env_config: dict[str, Any]):
    """``env_config["num_envs"]`` envs as one gymnasium vector env (RLlib's vector entry point).

    An Atari game is ale_py's ``AtariVectorEnv``: the emulators and the same preprocessing as
    ``_wrap_atari`` (grayscale, max over the last two of every ``frameskip`` frames, one
    ``INTER_AREA``-style resize, no-op starts, episodic life, FIRE on reset, the frame stack) in
    C++ on one thread, with no Python per emulator frame; ``ScaledChannelsLast`` gives its
    ``(num_envs, stack, dim, dim)`` uint8 frames as the one-env path's ``(dim, dim, stack)`` in
    [-1, 1]. Rewards are the game's (clipping stays the algorithm's). Two differences from the
    one-env path: at a reset the stack holds blank frames behind the first one (the one-env path
    repeats the first frame), and about one pixel in a few hundred is resized one grey level
    apart. Any other env, or Atari with an option only the one-env path has, is a
    ``SyncVectorEnv`` of ``make_env``'s envs.
    """
    cfg = dict(env_config)
    num_envs = int(cfg.pop("num_envs"))
    env_id = cfg["env_id"]
    if not is_atari(env_id) or any(k in cfg for k in _ONE_ENV_ONLY):
        return gym.vector.SyncVectorEnv([lambda: make_env(cfg) for _ in range(num_envs)])
    from ale_py.vector_env import AtariVectorEnv

    spec = env_spec(env_id).kwargs
    opts = {**ATARI_DEFAULTS, **{k: cfg[k] for k in ATARI_DEFAULTS if k in cfg}}
    env = AtariVectorEnv(
        spec["game"],
        num_envs,
        num_threads=1,  # the EnvRunner's one CPU
        max_num_frames_per_episode=spec.get("max_num_frames_per_episode", 108000),
        repeat_action_probability=cfg.get(
            "repeat_action_probability", spec.get("repeat_action_probability", 0.0)
        ),
        full_action_space=spec.get("full_action_space", False),
        img_height=opts["dim"],
        img_width=opts["dim"],
        stack_num=opts["framestack"],
        frameskip=opts["frameskip"],
        maxpool=opts["frameskip"] > 1,
        noop_max=opts["noop_max"],
        episodic_life=True,
        reward_clipping=False,
        use_fire_reset=True,
    )
    return ScaledChannelsLast(env)


class ScaledChannelsLast(gym.vector.VectorObservationWrapper):
    """(n, stack, H, W) uint8 frames -> (n, H, W, stack) float32 in [-1, 1], ``ResizeAndNormalize``'s
    scale and ``FrameStack``'s layout (the oldest frame first)."""

    def __init__(self, env):
        super().__init__(env)
        stack, height, width = env.single_observation_space.shape
        self.single_observation_space = gym.spaces.Box(-1.0, 1.0, (height, width, stack), np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)

    def observations(self, observations):
        frames = np.moveaxis(observations, 1, -1).astype(np.float32)
        frames *= 1.0 / 128.0
        frames -= 1.0
        return frames


def _wrap_atari(env, opts: dict[str, Any]):
    """DeepMind-style preprocessing with RLlib's wrappers, in the DeepMind order: the frame
    max over the last two of every ``frameskip`` frames is taken on the full-size grayscale
    frame and only that one frame is resized and normalised (RLlib's
    ``wrap_atari_for_new_api_stack`` resizes and normalises every emulator frame, 4x the work,
    then takes the max of the small frames)."""
    from ray.rllib.env.wrappers.atari_wrappers import (
        EpisodicLifeEnv,
        FireResetEnv,
        FrameStack,
        MaxAndSkipEnv,
        NoopResetEnv,
    )

    env = gym.wrappers.TimeLimit(env, max_episode_steps=108000)
    if opts["frameskip"] > 1:
        env = MaxAndSkipEnv(env, skip=opts["frameskip"])
    env = ResizeAndNormalize(env, opts["dim"])
    env = NoopResetEnv(env, noop_max=opts["noop_max"])
    env = EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    if opts["framestack"] > 1:
        env = FrameStack(env, k=opts["framestack"])
    return env


class ResizeAndNormalize(gym.ObservationWrapper):
    """A (H, W) uint8 grayscale frame -> (dim, dim, 1) float32 in [-1, 1] (RLlib's scale)."""

    def __init__(self, env, dim: int):
        super().__init__(env)
        self.dim = dim
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(dim, dim, 1), dtype=np.float32)

    def observation(self, observation):
        import cv2

        small = cv2.resize(observation, (self.dim, self.dim), interpolation=cv2.INTER_AREA)
        return (small.astype(np.float32) * (1.0 / 128.0) - 1.0)[:, :, None]


def registered_name(env_id: str) -> str:
    return ENV_PREFIX + env_id


def register(env_id: str) -> str:
    """Register ``make_env`` with Ray's registry for ``env_id``; return the Ray env name."""
    from ray.tune.registry import register_env

    name = registered_name(env_id)
    register_env(name, make_env)
    return name


def env_config_for(
    env_id: str, settings: dict[str, Any], module: str | None = None, kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The env_config passed to ``make_env`` (also stored in the checkpoint dir for evaluation)."""
    cfg: dict[str, Any] = {"env_id": env_id}
    if module:
        cfg["env_module"] = module
    if kwargs:
        cfg["env_kwargs"] = dict(kwargs)
    for k in ("dim", "framestack", "frameskip", "noop_max", "repeat_action_probability", "max_episode_steps"):
        if k in settings:
            cfg[k] = settings[k]
    return cfg
