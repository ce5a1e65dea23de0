"""The environments a request may name: gymnasium's built-in families, Atari, and the operator's
environment catalog; and ``env_config``, the request's keyword arguments for the environment.

The catalog (``RLQ_ENV_CATALOG``: a JSON file's path, or the JSON itself) is the deployment's, never
a request's: each entry is one trusted package -- a pinned requirement (``acme-sims==1.4.2``) or a
local wheel / directory for development -- and the module whose import registers its environments
with gymnasium (``gymnasium.register``, ids ``namespace/Name-vN``). A request names an environment
by id only; it can add no package, index URL or code (docs/environments.md, "Trust model").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from shared.contracts.base import Strict

# gymnasium's own families that a default install trains (docs/environments.md, "Built in").
CLASSIC_CONTROL = (
    "CartPole-v1",
    "CartPole-v0",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
)
TOY_TEXT = ("FrozenLake-v1", "FrozenLake8x8-v1", "Taxi-v3", "CliffWalking-v1", "Blackjack-v1")
# gymnasium's MuJoCo robots (the trainer extra installs gymnasium[mujoco]: mujoco's own wheels, no
# compiler), their current v5 ids. Every one acts in a rank-1 Box and observes a vector.
MUJOCO = (
    "Ant-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5",
    "InvertedPendulum-v5",
    "Pusher-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Walker2d-v5",
)
BUILTIN_ENVS = CLASSIC_CONTROL + TOY_TEXT + MUJOCO
# Built-in ids whose actions are continuous (a Box); every other built-in id and every Atari game
# has Discrete actions. Catalogued envs' spaces are the trainer's to check (trainer/envs.py).
CONTINUOUS_ACTIONS = frozenset({"MountainCarContinuous-v0", "Pendulum-v1", *MUJOCO})
# Algorithms that act in Discrete actions only (RLlib 2.60's new API stack): DQN's Q-network has one
# output per action. SAC takes a Box or a Discrete space, IMPALA, APPO and PPO any space rlq trains.
DISCRETE_ONLY = frozenset({"DQN"})
# Atari ids as ale-py registers them; the trainer checks the game exists.
ATARI_ENV_RE = re.compile(
    r"^(ALE/[A-Z][A-Za-z]{1,40}-v5|[A-Z][A-Za-z]{1,40}(NoFrameskip|Deterministic)?-v4)$"
)

# Highest mean episode return an env can give: a reward target above it can never stop a run.
MAX_RETURN = {
    "CartPole-v1": 500.0,
    "CartPole-v0": 200.0,
    "Acrobot-v1": 0.0,
    "MountainCar-v0": 0.0,
    "MountainCarContinuous-v0": 100.0,  # +100 at the goal, less the actions' cost
    "Pendulum-v1": 0.0,
    "FrozenLake-v1": 1.0,
    "FrozenLake8x8-v1": 1.0,
    "Taxi-v3": 20.0,  # +20 for the drop-off, -1 a step
    "CliffWalking-v1": -1.0,  # -1 a step
    "Blackjack-v1": 1.0,
    # MuJoCo ids with a bounded return (1,000 steps; the others' rewards grow with speed):
    "InvertedPendulum-v5": 1000.0,  # +1 a step upright
    "InvertedDoublePendulum-v5": 10000.0,  # +10 a step alive, less the distance and velocity penalties
    "Reacher-v5": 0.0,  # minus the distance and the control cost
    "Pusher-v5": 0.0,  # minus the distances and the control cost
    "Pong": 21.0,
}

# ``namespace/Name-vN``: gymnasium's id grammar, narrowed to what a file name and a log line carry.
NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
NAMESPACED_ENV_RE = re.compile(r"^(?P<namespace>[a-z][a-z0-9_]{0,31})/[A-Z][A-Za-z0-9_]{0,63}-v\d{1,4}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}$")
# A pinned requirement: one distribution (extras allowed) at one exact version; no URL, no index, no marker.
PINNED_REQUIREMENT_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*\])?==[A-Za-z0-9.+!_-]{1,40}$"
)

# --- env_config bounds -------------------------------------------------------------------------
ENV_CONFIG_MAX_BYTES = 4096  # the JSON, compact
ENV_CONFIG_MAX_DEPTH = 4  # the object itself is depth 1
ENV_CONFIG_MAX_ITEMS = 64  # keys of one object, items of one list
ENV_CONFIG_MAX_STRING = 256
ENV_CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # a Python keyword argument's name
# gymnasium.make's own keywords: the trainer sets them (render_mode for the replay GIF) or they would
# change what the trainer builds, so env_config cannot.
MAKE_KEYWORDS = frozenset(
    {"render_mode", "max_episode_steps", "autoreset", "apply_api_compatibility", "disable_env_checker", "id"}
)


class CatalogEntry(Strict):
    """One trusted environment package."""

    namespace: str = Field(..., pattern=NAMESPACE_RE.pattern)
    module: str = Field(..., pattern=MODULE_RE.pattern)
    requirement: str | None = Field(None, pattern=PINNED_REQUIREMENT_RE.pattern)
    path: str | None = Field(None, min_length=1, max_length=1024)  # a local wheel or project directory
    description: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> CatalogEntry:
        if (self.requirement is None) == (self.path is None):
            raise ValueError(
                f"namespace {self.namespace!r}: give exactly one of requirement (a pinned name==version) "
                "or path (a local wheel or directory)"
            )
        return self

    @property
    def top_level(self) -> str:
        """The importable top-level package of :attr:`module`."""
        return self.module.split(".")[0]


class EnvironmentCatalog(Strict):
    """The operator's environment packages, one per namespace."""

    packages: tuple[CatalogEntry, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> EnvironmentCatalog:
        seen: set[str] = set()
        for entry in self.packages:
            if entry.namespace in seen:
                raise ValueError(f"namespace {entry.namespace!r} is catalogued twice")
            seen.add(entry.namespace)
        return self

    @classmethod
    def load(cls, source: str | None) -> EnvironmentCatalog:
        """The catalog from ``source``: inline JSON (starts with ``{``), or a JSON file's path, whose
        relative ``path`` entries are resolved against the file's folder. None: an empty catalog.
        Raises ``ValueError`` naming the setting and what is wrong."""
        if source is None or not source.strip():
            return cls()
        base: Path | None = None
        text = source
        if not source.lstrip().startswith("{"):
            file = Path(source).expanduser()
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as err:
                raise ValueError(f"RLQ_ENV_CATALOG: cannot read {file}: {err.strerror or err}") from None
            base = file.resolve().parent
        try:
            catalog = cls.model_validate_json(text)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(catalog)"
            raise ValueError(f"RLQ_ENV_CATALOG: {where}: {first['msg']}") from None
        if base is None:
            return catalog
        return cls(
            packages=tuple(
                e if e.path is None else e.model_copy(update={"path": str((base / e.path).resolve())})
                for e in catalog.packages
            )
        )

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(e.namespace for e in self.packages)

    def entry_for(self, env_id: str) -> CatalogEntry | None:
        """The entry whose namespace ``env_id`` is in, or None (a built-in or Atari id, or unknown)."""
        match = NAMESPACED_ENV_RE.match(env_id)
        if match is None:
            return None
        return next((e for e in self.packages if e.namespace == match["namespace"]), None)

    def requirements(self) -> list[str]:
        """The pinned requirements, sorted: what a job image installs from the package index."""
        return sorted(e.requirement for e in self.packages if e.requirement is not None)

    def digest(self) -> str:
        """12 hex digits that change whenever an entry does (an environment image's version)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def env_id_problem(env_id: str) -> str | None:
    """Why ``env_id`` is no id a request may name at all (schema level), or None.

    A namespaced id passes here; whether its namespace is catalogued is the deployment's question
    (:func:`catalog_problem`)."""
    if env_id in BUILTIN_ENVS or ATARI_ENV_RE.match(env_id) or NAMESPACED_ENV_RE.match(env_id):
        return None
    return f"{env_id[:80]!r} is not an allowed environment; allowed: {allowed_families()}"


def algorithm_env_problem(algorithm: str, env_id: str) -> str | None:
    """Why ``algorithm`` can never train the built-in ``env_id`` (its action space is known), naming
    both fields, or None."""
    if algorithm in DISCRETE_ONLY and env_id in CONTINUOUS_ACTIONS:
        return (
            f"algorithm {algorithm} cannot train env {env_id}: {algorithm} takes discrete actions and "
            f"{env_id}'s are continuous (a Box); allowed: algorithm SAC, PPO, APPO or IMPALA for this env, "
            f"or an env with discrete actions for {algorithm}"
        )
    return None


def allowed_families(namespaces: tuple[str, ...] | None = None) -> str:
    catalogued = (
        "an id namespace/Name-vN in this deployment's environment catalog"
        if namespaces is None
        else (
            "an id in a catalogued namespace (" + ", ".join(f"{n}/" for n in namespaces) + ")"
            if namespaces
            else "no catalogued namespace (the deployment's environment catalog is empty)"
        )
    )
    return (
        f"gymnasium's classic control ({', '.join(CLASSIC_CONTROL)}), toy text ({', '.join(TOY_TEXT)}), "
        f"MuJoCo ({', '.join(MUJOCO)}), an Atari id such as PongNoFrameskip-v4 / ALE/Pong-v5, or {catalogued}"
    )


def catalog_problem(env_id: str, catalog: EnvironmentCatalog) -> str | None:
    """Why this deployment cannot train ``env_id`` (a namespace it does not catalogue), or None."""
    if NAMESPACED_ENV_RE.match(env_id) and catalog.entry_for(env_id) is None:
        return f"{env_id!r} is in no catalogued namespace; allowed: {allowed_families(catalog.namespaces)}"
    return None


def env_config_problem(value: Any, depth: int = 1, where: str = "") -> str | None:
    """Why ``value`` (the request's ``env_config``, or a part of it) is not a bounded JSON object of
    keyword arguments, or None. The message names the path inside ``env_config``."""
    if depth > ENV_CONFIG_MAX_DEPTH:
        return f"{where or 'env_config'}: nested deeper than {ENV_CONFIG_MAX_DEPTH} levels"
    if isinstance(value, dict):
        if len(value) > ENV_CONFIG_MAX_ITEMS:
            return f"{where or 'env_config'}: {len(value)} keys; allowed: at most {ENV_CONFIG_MAX_ITEMS}"
        for key, item in value.items():
            if not isinstance(key, str) or not ENV_CONFIG_KEY_RE.match(key):
                return (
                    f"key {str(key)[:40]!r} is not allowed; keys are names: a letter or _, then letters, "
                    "digits, _ (max 64)"
                )
            if depth == 1 and key in MAKE_KEYWORDS:
                return f"key {key!r} is gymnasium.make's own, set by the trainer; allowed: the environment's own keywords"
            problem = env_config_problem(item, depth + 1, f"{where}.{key}" if where else key)
            if problem:
                return problem
        return None
    return _leaf_problem(value, depth, where)


def _leaf_problem(value: Any, depth: int, where: str) -> str | None:
    if isinstance(value, list):
        if len(value) > ENV_CONFIG_MAX_ITEMS:
            return f"{where}: {len(value)} items; allowed: at most {ENV_CONFIG_MAX_ITEMS}"
        for i, item in enumerate(value):
            problem = env_config_problem(item, depth + 1, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}: {value!r} is not a finite number"
    if isinstance(value, str) and (
        len(value) > ENV_CONFIG_MAX_STRING or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        return f"{where}: strings are at most {ENV_CONFIG_MAX_STRING} printable characters"
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    return f"{where}: {type(value).__name__} is not a JSON value"


def check_env_config(value: dict[str, Any]) -> dict[str, Any]:
    """``env_config`` as given, or ``ValueError`` naming what breaks a bound."""
    problem = env_config_problem(value)
    if problem is None and len(json.dumps(value, separators=(",", ":"))) > ENV_CONFIG_MAX_BYTES:
        problem = f"larger than {ENV_CONFIG_MAX_BYTES} bytes as JSON"
    if problem:
        raise ValueError(problem)
    return value
