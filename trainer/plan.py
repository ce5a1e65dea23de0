"""The plan: every argument checked and turned into what the run uses, before Ray starts.

A mistake raises :class:`trainer.config_map.UsageError` naming the flag, the value and what is
allowed (exit code 2, one line on stderr).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import config_map, envs, presets
from trainer.config_map import MappedConfig, UsageError

if TYPE_CHECKING:  # train.py builds the Args and imports this module
    from trainer.train import Args

RESTORE_SCHEME = "file://"
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class Plan:
    """Everything validated before Ray starts."""

    def __init__(self, args: Args):
        self.algorithm = _algorithm(args.run)
        self.env_module = _env_module(args.env_module)
        self.env_id = _env_id(args.env, self.env_module)
        self.atari = envs.is_atari(self.env_id)
        self.env_kwargs: dict[str, Any] = (
            _json_arg("--env-config", args.env_config) if args.env_config else {}
        )
        if not isinstance(self.env_kwargs, dict):
            raise UsageError(
                "--env-config", self.env_kwargs, "a JSON object of the environment's keyword arguments"
            )
        self.image_obs = False  # an image observation (not Atari's): the CNN preset
        self.discrete_actions = True  # Atari's are Discrete
        if not self.atari:  # built once before Ray starts: a bad key or an unsupported space fails here
            probed = envs.probe(self.env_id, self.env_module, self.env_kwargs, self.algorithm)
            self.image_obs = envs.is_image(probed.observation_space)
            self.discrete_actions = envs.is_discrete(probed.action_space)
        self.mapped: MappedConfig = config_map.map_config(_json_arg("--config", args.config), self.algorithm)
        self.stop = _stop(args.stop, self.env_id, self.atari)
        self.output_dir = _output_dir(args.output_dir)
        self.ray_address = args.ray_address
        self.restore = _restore(args.restore) if args.restore else None
        self.checkpoint_freq = _int_arg("--checkpoint-freq", args.checkpoint_freq, 0, 10**6)
        self.checkpoint_every_s = _int_arg("--checkpoint-every-s", args.checkpoint_every_s, 0, 10**7)
        self.checkpoint_keep = _int_arg("--checkpoint-keep", args.checkpoint_keep, 1, 1000) or 1
        self.resume = bool(args.resume)
        self.seed = _int_arg("--seed", args.seed, 0, 2**31 - 1)
        self.evaluate_episodes = _int_arg("--evaluate-episodes", args.evaluate_episodes, 0, 10_000)
        self.evaluate_gif = bool(args.evaluate_gif)
        if self.evaluate_gif and not self.evaluate_episodes:
            self.evaluate_episodes = 1
        self.model_eval_episodes = _int_arg("--model-eval-episodes", args.model_eval_episodes, 0, 10_000)
        # Not checked here: a champion that cannot be played never fails the run (summary says why).
        self.champion: str | None = args.champion
        self.champion_version = _int_arg("--champion-version", args.champion_version, 1, 10**9)


def _algorithm(text: str) -> str:
    algorithm = str(text).upper()
    if algorithm not in config_map.ALGORITHMS:
        raise UsageError("--run", text, "one of " + ", ".join(config_map.ALGORITHMS))
    return algorithm


def _env_module(text: str | None) -> str | None:
    """Import the module that registers the environment (the catalog's), or UsageError naming it."""
    if text is None:
        return None
    if not MODULE_RE.match(text):
        raise UsageError("--env-module", text, "a dotted Python module name")
    try:
        envs.import_env_module(text)
    except Exception as exc:  # noqa: BLE001 - any import failure of the package is the catalog entry's
        raise UsageError(
            "--env-module",
            text,
            "",
            message=f"--env-module: {text} cannot be imported: {type(exc).__name__}: {exc}",
        ) from None
    return text


def _env_id(text: str, module: str | None = None) -> str:
    if envs.env_spec(text) is None:
        if module is not None:
            registered = envs.registered_by(module)
            raise UsageError(
                "--env",
                text,
                "",
                message=f"--env: {module} registers no environment {text!r}; it registers "
                + (
                    ", ".join(registered) if registered else "none (no gymnasium.register call ran on import)"
                ),
            )
        raise UsageError(
            "--env",
            text,
            "a registered Gymnasium env id such as CartPole-v1, PongNoFrameskip-v4 or ALE/Pong-v5",
        )
    return text


def _stop(text: str | None, env_id: str, atari: bool) -> dict[str, float]:
    if text is None:
        return config_map.map_stop(presets.default_stop(env_id, atari))
    stop = config_map.map_stop(_json_arg("--stop", text))
    if not stop:
        raise UsageError(
            "--stop", text, "at least one stop criterion", "accepted: " + ", ".join(config_map.STOP_KEYS)
        )
    return stop


def _output_dir(text: str) -> Path:
    path = Path(text).resolve()
    if path.exists() and not path.is_dir():
        raise UsageError("--output-dir", text, "a directory path")
    return path


def _restore(text: str) -> Path:
    path = text.removeprefix(RESTORE_SCHEME)
    if "://" in path or not Path(path).is_dir():
        raise UsageError("--restore", text, "an existing local checkpoint directory or file:// URI")
    if not (Path(path) / "learner_group").is_dir():
        raise UsageError("--restore", text, "an RLlib checkpoint directory (with learner_group/)")
    return Path(path).resolve()


def _int_arg(name: str, text: str | None, lo: int, hi: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(name, text, f"an integer between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise UsageError(name, value, f"an integer between {lo} and {hi}")
    return value


def _json_arg(name: str, text: str) -> Any:
    stripped = text.strip()
    # The article wraps the JSON in an extra pair of single quotes for the shell.
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == "'":
        stripped = stripped[1:-1]
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise UsageError(
            name, text, "a JSON object", f"malformed JSON: {exc.msg} at column {exc.colno}"
        ) from None
