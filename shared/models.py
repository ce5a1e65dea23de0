"""The contracts: training request, run record, completion message.

Every model rejects unknown keys, and every validation error names the field and what is allowed
(see :func:`field_errors`). Allow-lists live here, beside the fields they guard.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote

from pydantic import (
    AnyUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import InvalidRequest
from shared.vm_sizes import (
    DEFAULT_HEAD_VM_SIZE,
    DEFAULT_WORKER_VM_SIZE,
    VM_SIZES,
    check_vm_size,
    substitute_vm_size,
)

log = logging.getLogger(__name__)

# --- allow-lists -----------------------------------------------------------------------------

Algorithm = Literal["IMPALA", "APPO", "PPO"]
ALGORITHMS: tuple[str, ...] = get_args(
    Algorithm
)  # trainer/config_map.py mirrors it (trainer/ imports no shared/)

CLASSIC_ENVS = ("CartPole-v1", "CartPole-v0", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1")
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
    "Pendulum-v1": 0.0,
    "Pong": 21.0,
}


# RLlib config keys a request may set: today's names and the seed-era names the trainer maps.
CONFIG_KEYS = frozenset(
    {
        # seed era
        "num_workers",
        "num_envs_per_worker",
        "num_gpus",
        "sample_batch_size",
        "train_batch_size",
        "num_sgd_iter",
        "num_data_loader_buffers",
        "model.dim",
        "model",
        "rollout_fragment_length",
        "num_cpus_per_worker",
        "num_gpus_per_worker",
        "sgd_minibatch_size",
        # today
        "num_env_runners",
        "num_envs_per_env_runner",
        "num_learners",
        "num_gpus_per_learner",
        "num_cpus_per_env_runner",
        "train_batch_size_per_learner",
        "minibatch_size",
        "num_epochs",
        "lr",
        "gamma",
        "entropy_coeff",
        "vf_loss_coeff",
        "grad_clip",
        "lambda",
        "clip_param",
        "vtrace",
        "vtrace_clip_rho_threshold",
        "vtrace_clip_pg_rho_threshold",
        "circular_buffer_num_batches",
        "circular_buffer_iterations_per_batch",
        "broadcast_interval",
        "fcnet_hiddens",
        "conv_filters",
        "framestack",
        "dim",
        "use_kl_loss",
        "kl_coeff",
        "seed",
    }
)
MODEL_KEYS = frozenset(
    {
        "dim",
        "fcnet_hiddens",
        "conv_filters",
        "framestack",
        "vf_share_layers",
        "fcnet_activation",
        "conv_activation",
        "use_lstm",
        "lstm_cell_size",
    }
)

# What the config values that size memory or compute may be (docs/guarantees.md, "Field audit"):
# ``key -> (lowest, highest)``, inclusive. The highest values are what the largest allowed node
# (shared/vm_sizes.py: 96 vCPUs, 880 GiB) could still hold or run: one sample of an Atari batch is
# an 84x84x4 frame, about 113 KB as float32 on the learner, so 2**20 samples are about 118 GB.
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "train_batch_size": (1, 2**20),
    "train_batch_size_per_learner": (1, 2**20),
    "minibatch_size": (1, 2**16),
    "sgd_minibatch_size": (1, 2**16),
    "sample_batch_size": (1, 10_000),  # a fragment is held per env in every EnvRunner
    "rollout_fragment_length": (1, 10_000),
    "num_sgd_iter": (1, 100),  # passes over each batch: compute, not memory
    "num_epochs": (1, 100),
    "num_envs_per_worker": (1, 256),  # emulators in one process
    "num_envs_per_env_runner": (1, 256),
    "num_workers": (0, 1024),
    "num_env_runners": (0, 1024),
    "num_learners": (0, 64),
    "num_gpus": (0, 64),
    "num_gpus_per_learner": (0, 8),
    "num_gpus_per_worker": (0, 8),
    "num_cpus_per_worker": (0, 96),
    "num_cpus_per_env_runner": (0, 96),
    "num_data_loader_buffers": (1, 64),
    "circular_buffer_num_batches": (1, 1024),
    "circular_buffer_iterations_per_batch": (1, 100),
    "broadcast_interval": (1, 10_000),
    "seed": (0, 2**32 - 1),  # what numpy seeds take
    "gamma": (0, 1),
    "lambda": (0, 1),
    "dim": (16, 512),  # the frame's side in pixels: memory grows with its square
    "framestack": (1, 32),
    "lstm_cell_size": (1, 4096),
}
MAX_LAYERS = 16  # fcnet_hiddens / conv_filters entries
MAX_LAYER_WIDTH = 8192  # units of one dense layer, channels of one conv layer
MAX_ENVS = 4096  # EnvRunners times envs per EnvRunner: emulators in the whole run
# A request's env runners need a CPU each (num_cpus_per_env_runner, default 1) beside one for the
# learner / driver; past the CPUs of every node it may ask for, Ray would keep them pending forever.
ENV_RUNNER_KEYS = ("num_env_runners", "num_workers")
ENVS_PER_RUNNER_KEYS = ("num_envs_per_env_runner", "num_envs_per_worker")
CPUS_PER_RUNNER_KEYS = ("num_cpus_per_env_runner", "num_cpus_per_worker")


# The config keys whose value is true / false (trainer/config_map.py: boolean()); every other key
# takes numbers, names or lists of numbers, where a JSON boolean is a mistake, not a count.
BOOL_CONFIG_KEYS = frozenset({"vtrace", "use_kl_loss"})
BOOL_MODEL_KEYS = frozenset({"vf_share_layers", "use_lstm", "framestack"})  # old model.framestack: bool
_NOT_A_NUMBER = "true / false is not allowed here; expected a number"

STOP_KEYS = ("episode_reward_mean", "time_total_s", "timesteps_total", "training_iteration")

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"  # 100: "<id>:completed" and "<id>:deferred:<n>" stay under Service Bus's 128
# ``restore_from: rlq://<request_id>``: the final checkpoint of an earlier run, resolved at intake.
RESTORE_SCHEME = "rlq://"
QUEUE_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$"
CLUSTER_RE = r"^[A-Za-z][A-Za-z0-9-]{1,15}$"  # Azure ML compute names: 2-16 chars
# Free text that may reach a shell-adjacent place (job tags, file names, card markdown): none of these.
SHELL_CHARS = frozenset(";|&$`<>\\")
# String values inside ``config`` (activation names and the like): a plain token.
CONFIG_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


# --- the training request --------------------------------------------------------------------


# Counts and numbers take ``strict=True``: a JSON boolean (``true`` is 1 to Python) or a numeric
# string is refused, naming the field, instead of being read as a count.


class Stop(Strict):
    """Stop criteria (seed names); whichever is met first ends training."""

    episode_reward_mean: float | None = Field(None, ge=-1e6, le=1e6, allow_inf_nan=False, strict=True)
    time_total_s: int | None = Field(None, ge=1, le=7 * 24 * 3600, strict=True)
    timesteps_total: int | None = Field(None, ge=1, le=10**11, strict=True)
    training_iteration: int | None = Field(None, ge=1, le=10**7, strict=True)

    @model_validator(mode="after")
    def _some(self) -> Stop:
        if all(getattr(self, k) is None for k in STOP_KEYS):
            raise ValueError(f"at least one stop criterion is required: one of {', '.join(STOP_KEYS)}")
        return self


class _Cluster(Strict):
    """What head and worker clusters share: an allow-listed VM size and a sane node range."""

    @field_validator("vm_size", check_fields=False)
    @classmethod
    def _vm(cls, v: str) -> str:
        return check_vm_size(v)

    @model_validator(mode="after")
    def _range(self) -> _Cluster:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) must not exceed max_nodes ({self.max_nodes})")
        return self


class HeadCluster(_Cluster):
    name: str = Field("head-gpu", pattern=CLUSTER_RE)
    vm_size: str = DEFAULT_HEAD_VM_SIZE
    min_nodes: int = Field(0, ge=0, le=100, strict=True)
    max_nodes: int = Field(2, ge=1, le=100, strict=True)
    # Nodes of the head job: one, or a homogeneous MPI job whose rank 0 is the Ray head.
    node_count: int = Field(1, ge=1, le=100, strict=True)

    @model_validator(mode="after")
    def _count(self) -> HeadCluster:
        if self.node_count > self.max_nodes:
            raise ValueError(f"node_count ({self.node_count}) must not exceed max_nodes ({self.max_nodes})")
        return self


class WorkerCluster(_Cluster):
    name: str = Field("worker-cpu", pattern=CLUSTER_RE)
    vm_size: str = DEFAULT_WORKER_VM_SIZE
    node_count: int = Field(4, ge=0, le=100, strict=True)
    min_nodes: int = Field(0, ge=0, le=100, strict=True)
    max_nodes: int = Field(4, ge=0, le=100, strict=True)

    @model_validator(mode="after")
    def _count(self) -> WorkerCluster:
        if self.node_count > self.max_nodes:
            raise ValueError(f"node_count ({self.node_count}) must not exceed max_nodes ({self.max_nodes})")
        return self


class Compute(Strict):
    """Where the job runs. Absent fields take the deployment's settings."""

    backend: Literal["ray", "azureml", "azureml_v1", "twin"] | None = None
    head: HeadCluster | None = None
    workers: WorkerCluster | None = None
    vnet: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    subnet: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
    max_run_duration_s: int | None = Field(None, ge=60, le=7 * 24 * 3600, strict=True)
    # A retired / previous-generation vm_size (the seed's STANDARD_NC6) runs on its first named
    # replacement instead of being refused; the request as stored names the size that runs.
    allow_size_substitution: bool = Field(False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _substitute(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("allow_size_substitution") is not True:
            return data
        data = dict(data)
        for part in ("head", "workers"):
            cluster = data.get(part)
            if isinstance(cluster, dict) and (to := substitute_vm_size(cluster.get("vm_size"))):
                log.warning(
                    "compute.%s.vm_size %s runs on %s (allowed by the request)", part, cluster["vm_size"], to
                )
                data[part] = {**cluster, "vm_size": to}
        return data

    def total_cpus(self) -> int | None:
        """vCPUs of one head node plus all worker nodes; None when no cluster is described."""
        if self.head is None and self.workers is None:
            return None
        head = self.head or HeadCluster()
        workers = self.workers or WorkerCluster()
        return (
            VM_SIZES[head.vm_size].cpus * head.node_count
            + VM_SIZES[workers.vm_size].cpus * workers.node_count
        )

    def total_gpus(self) -> int:
        head = self.head or HeadCluster()
        workers = self.workers or WorkerCluster()
        return (
            VM_SIZES[head.vm_size].gpus * head.node_count
            + VM_SIZES[workers.vm_size].gpus * workers.node_count
        )

    def total_nodes(self) -> int:
        return (self.head or HeadCluster()).node_count + (self.workers or WorkerCluster()).node_count


def _url_text(v: Any) -> Any:
    """Refuse, before URL parsing normalises them away, what no webhook URL needs.

    User info would carry a secret into logs; shell metacharacters, quotes, spaces and ``..``
    segments have no business in an endpoint a request names. The message never echoes the URL
    (a Teams URL carries its signature in the query).
    """
    if not isinstance(v, str):
        return v
    if any(ord(c) < 33 or ord(c) == 127 for c in v):
        raise ValueError("URL contains spaces or control characters")
    bad = sorted({c for c in v if c in ";|$`<>\\\"'{}^"})  # '&' stays: query strings need it
    if bad:
        raise ValueError(f"URL contains {' '.join(bad)}; these characters are not allowed in a webhook URL")
    rest = v.split("://", 1)[-1]
    authority, _, path = re.split(r"[?#]", rest, maxsplit=1)[0].partition("/")
    if "@" in authority:
        raise ValueError(
            "credentials in the URL are not allowed; webhooks are authenticated by their signature"
        )
    if ".." in unquote(path).split("/"):
        raise ValueError("path traversal ('..') is not allowed in a webhook URL")
    return v


WebhookUrl = Annotated[AnyUrl, BeforeValidator(_url_text)]


class Notify(Strict):
    webhooks: list[WebhookUrl] = Field(default_factory=list, max_length=10)
    teams: list[WebhookUrl] = Field(default_factory=list, max_length=5)

    @field_validator("webhooks", "teams")
    @classmethod
    def _scheme(cls, urls: list[AnyUrl]) -> list[AnyUrl]:
        for u in urls:
            if u.scheme not in ("https", "http"):
                raise ValueError(f"{str(u)!r}: scheme {u.scheme!r} is not allowed; use https")
            if len(str(u)) > 2048:
                raise ValueError("URL longer than 2048 characters")
        return urls


class Evaluate(Strict):
    episodes: int = Field(5, ge=1, le=100, strict=True)
    gif: bool = Field(False, strict=True)


class TrainingRequest(Strict):
    """A request to train: the JSON body of a ``training-requests`` message."""

    request_id: str = Field(..., pattern=ID_RE)
    experiment: str = Field("rlq", pattern=NAME_RE)
    algorithm: Algorithm = "IMPALA"
    env: str = "PongNoFrameskip-v4"
    config: dict[str, Any] = Field(default_factory=dict)
    stop: Stop = Field(default_factory=lambda: Stop(episode_reward_mean=18, time_total_s=3600))
    compute: Compute = Field(default_factory=Compute)
    restore_from: str | None = Field(None, max_length=1024)
    notify: Notify = Field(default_factory=Notify)
    reply_to: str | None = Field(None, pattern=QUEUE_RE)
    tags: dict[str, str] = Field(default_factory=dict, max_length=32)
    evaluate: Evaluate | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, v: str) -> str:
        if v in CLASSIC_ENVS or ATARI_ENV_RE.match(v):
            return v
        raise ValueError(
            f"{v!r} is not an allowed environment; allowed: {', '.join(CLASSIC_ENVS)}, or an Atari id "
            "such as PongNoFrameskip-v4 / ALE/Pong-v5"
        )

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key not in CONFIG_KEYS:
                raise ValueError(f"key {key!r} is not allowed; allowed: {', '.join(sorted(CONFIG_KEYS))}")
            if key == "model":
                if not isinstance(value, dict):
                    raise ValueError("'model' must be an object")
                bad = sorted(set(value) - MODEL_KEYS)
                if bad:
                    raise ValueError(
                        f"model key {bad[0]!r} is not allowed; allowed: {', '.join(sorted(MODEL_KEYS))}"
                    )
                for sub, sub_value in value.items():
                    if sub not in BOOL_MODEL_KEYS and _has_bool(sub_value):
                        raise ValueError(f"model.{sub}: {_NOT_A_NUMBER}")
            elif key not in BOOL_CONFIG_KEYS and _has_bool(value):
                raise ValueError(f"{key}: {_NOT_A_NUMBER}")
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)):
                if key.startswith("num_") and (not float(value).is_integer() or value < 0 or value > 1024):
                    raise ValueError(
                        f"{key}: {value!r} is not allowed; expected an integer between 0 and 1024"
                    )
            elif isinstance(value, str):
                raise ValueError(f"{key}: strings are not allowed here")
            elif isinstance(value, dict) and key != "model":
                raise ValueError(f"{key}: an object is not allowed here")
            problem = _config_value_problem(value)
            if problem:
                raise ValueError(f"{key}: {problem}")
            for name, item in value.items() if key == "model" else [(key, value)]:
                problem = _size_problem(name, item)
                if problem:
                    raise ValueError(f"{'model.' if key == 'model' else ''}{name}: {problem}")
        envs = config_int(v, ENV_RUNNER_KEYS, 0) * config_int(v, ENVS_PER_RUNNER_KEYS, 1)
        if envs > MAX_ENVS:
            raise ValueError(
                f"num_env_runners x num_envs_per_env_runner is {envs}; allowed: at most {MAX_ENVS} envs in a run"
            )
        if len(json.dumps(v)) > 16_384:
            raise ValueError("config is larger than 16 KB")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", k):
                raise ValueError(f"tag name {k!r} is not allowed; use letters, digits, _ . - (max 64)")
            if len(val) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in val):
                raise ValueError(f"tag {k!r}: value must be at most 256 printable characters")
            if any(c in SHELL_CHARS for c in val) or ".." in re.split(r"[/\\]", val):
                raise ValueError(
                    f"tag {k!r}: shell metacharacters ({' '.join(sorted(SHELL_CHARS))}) and '..' "
                    "path segments are not allowed"
                )
        return v

    @property
    def restore_parent(self) -> str | None:
        """The request id named by ``restore_from: rlq://<request_id>``, else None."""
        if self.restore_from and self.restore_from.startswith(RESTORE_SCHEME):
            return self.restore_from.removeprefix(RESTORE_SCHEME)
        return None

    @field_validator("restore_from")
    @classmethod
    def _restore(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith(RESTORE_SCHEME):
            if not re.match(ID_RE, v.removeprefix(RESTORE_SCHEME)):
                raise ValueError(f"{v!r}: expected rlq://<request_id> of an earlier run")
            return v
        if not re.match(r"^(file|azureml|abfss|https)://", v):
            raise ValueError(
                "must be a URI: rlq://<request_id> (an earlier run's final checkpoint), file://, "
                "azureml://, abfss:// or https://"
            )
        decoded = unquote(v)  # %2e%2e is '..' to whoever decodes the URI later
        if ".." in re.split(r"[/\\]", unquote(v.split("?")[0])) or any(
            c in text for text in (v, decoded) for c in "\x00\n\r;`$|&<>\\"
        ):
            raise ValueError("path traversal and shell metacharacters are not allowed")
        return v

    @model_validator(mode="after")
    def _reachable(self) -> TrainingRequest:
        target = self.stop.episode_reward_mean
        if target is not None:
            ceiling = MAX_RETURN.get(self.env)
            if ceiling is None:  # not `or`: a ceiling of 0.0 (Acrobot, MountainCar, Pendulum) is a ceiling
                ceiling = MAX_RETURN.get(_game(self.env))
            if ceiling is not None and target > ceiling:
                raise ValueError(
                    f"stop.episode_reward_mean {target} can never be reached on {self.env} "
                    f"(highest mean return {ceiling})"
                )
        return self


def _config_value_problem(value: Any) -> str | None:
    """Why a (possibly nested) config value cannot be passed on to RLlib, or None.

    NaN / infinity would be written as ``null`` on the way to the trainer, silently changing the
    request; strings are only ever names (activations), so anything else in one is refused.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if isinstance(value, str):
        return (
            None
            if CONFIG_TOKEN_RE.match(value)
            else (f"{value[:40]!r} is not allowed; strings here are names (letters, digits, _ . -, max 64)")
        )
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        problem = _config_value_problem(item)
        if problem:
            return problem
    return None


def config_int(config: dict[str, Any], keys: tuple[str, ...], default: int) -> int:
    """The first of ``keys`` (today's name, then the seed-era one) set to a number in ``config``."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return default


def resource_problems(
    request: TrainingRequest,
    *,
    own_queues: dict[str, str],
    own_clusters: dict[str, str],
    max_cpus: int | None,
) -> list[dict[str, str]]:
    """What in a schema-valid request collides with the deployment it was sent to, as field errors.

    ``own_queues``: rlq's own queue, topic and subscription names -> what each is; a ``reply_to``
    naming one would feed completions back into rlq, an ``experiment`` naming one would be mistaken
    for it. ``own_clusters``: the deployment's cluster names -> their role; a request's head may not
    take the workers' cluster nor its workers the head's. ``max_cpus``: the most vCPUs the request
    can get (its clusters, else the deployment's), or None when unknown."""
    problems: list[dict[str, str]] = []
    folded = {name.lower(): what for name, what in own_queues.items()}
    if request.reply_to is not None and request.reply_to.lower() in folded:
        what = folded[request.reply_to.lower()]
        problems.append(
            {
                "field": "reply_to",
                "message": f"{request.reply_to!r} is rlq's own {what}; completions sent there would come "
                "back into rlq. Allowed: a queue or topic of your own, none of "
                + ", ".join(sorted(own_queues)),
            }
        )
    reserved = folded | {name.lower(): f"{role} cluster" for name, role in own_clusters.items()}
    if request.experiment.lower() in reserved:
        problems.append(
            {
                "field": "experiment",
                "message": f"{request.experiment!r} is the name of rlq's own {reserved[request.experiment.lower()]}; "
                "allowed: any other name",
            }
        )
    c = request.compute
    if c.head is not None and c.workers is not None and c.head.name.lower() == c.workers.name.lower():
        problems.append(
            {
                "field": "compute.workers.name",
                "message": f"{c.workers.name!r} is also compute.head.name; one cluster cannot be both, "
                "allowed: a name other than the head's",
            }
        )
    for part, cluster in (("head", c.head), ("workers", c.workers)):
        role = own_clusters.get(cluster.name) if cluster is not None else None
        mine = "head" if part == "head" else "worker"
        if cluster is not None and role is not None and role != mine:
            problems.append(
                {
                    "field": f"compute.{part}.name",
                    "message": f"{cluster.name!r} is rlq's {role} cluster; the {mine}s cannot take it over, "
                    f"allowed: any name but {cluster.name!r}",
                }
            )
    runners = config_int(request.config, ENV_RUNNER_KEYS, 0)
    per_runner = max(1, config_int(request.config, CPUS_PER_RUNNER_KEYS, 1))
    needed = runners * per_runner + 1  # one more for the driver / learner
    if max_cpus is not None and runners and needed > max_cpus:
        problems.append(
            {
                "field": "config.num_env_runners",
                "message": f"{runners} EnvRunners x {per_runner} CPUs + 1 need {needed} CPUs; the cluster "
                f"offers {max_cpus}. Allowed: at most {max(0, (max_cpus - 1) // per_runner)} EnvRunners",
            }
        )
    return problems


def _size_problem(key: str, value: Any) -> str | None:
    """Why a config value sizes memory or compute past what any allowed cluster holds, or None."""
    if isinstance(value, bool) or value is None:
        return None
    bounds = CONFIG_BOUNDS.get(key.removeprefix("model."))  # the seed era's "model.dim" too
    if bounds is not None and isinstance(value, (int, float)):
        lo, hi = bounds
        if not lo <= value <= hi:
            return f"{value!r} is not allowed; allowed: {lo:g} to {hi:g}"
    if key in ("fcnet_hiddens", "post_fcnet_hiddens", "conv_filters") and isinstance(value, list):
        if len(value) > MAX_LAYERS:
            return f"{len(value)} layers is not allowed; allowed: at most {MAX_LAYERS}"
        widths = [w for layer in value for w in (layer[:1] if isinstance(layer, list) else [layer])]
        for w in widths:
            if isinstance(w, (int, float)) and not 1 <= w <= MAX_LAYER_WIDTH:
                return f"a layer of {w!r} units is not allowed; allowed: 1 to {MAX_LAYER_WIDTH}"
    return None


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return False


def _game(env: str) -> str:
    return re.sub(r"^ALE/|(NoFrameskip|Deterministic)?-v\d+$", "", env)


# --- the run record --------------------------------------------------------------------------


class RunState(StrEnum):
    received = "received"
    provisioning = "provisioning"
    submitted = "submitted"
    running = "running"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"
    timed_out = "timed_out"
    notified = "notified"
    rejected = "rejected"


ACTIVE = frozenset({RunState.received, RunState.provisioning, RunState.submitted, RunState.running})
TERMINAL = frozenset({RunState.completed, RunState.failed, RunState.canceled, RunState.timed_out})
FINAL = TERMINAL | {RunState.notified, RunState.rejected}

Status = Literal["Completed", "Failed", "Canceled", "TimedOut"]
STATUS_OF: dict[RunState, Status] = {
    RunState.completed: "Completed",
    RunState.failed: "Failed",
    RunState.canceled: "Canceled",
    RunState.timed_out: "TimedOut",
}
StopReason = Literal[
    "reward_reached", "time_limit", "timesteps_limit", "iterations_limit", "error", "canceled", "stalled"
]


class Progress(BaseModel):
    """The latest training iteration a backend saw (one ``metrics.jsonl`` line)."""

    model_config = ConfigDict(extra="allow")
    iteration: int = 0
    time_total_s: float = 0.0
    timesteps: int = 0
    episode_reward_mean: float | None = None
    episode_reward_min: float | None = None
    episode_reward_max: float | None = None
    episodes_total: int | None = None
    env_steps_per_s: float | None = None


class CompletionMessage(Strict):
    """Posted to the ``training-completed`` topic, the reply queue, webhooks and Teams."""

    message_id: str
    request_id: str
    run_id: str | None = None
    status: Status
    stop_reason: StopReason | None = None
    experiment: str = "rlq"
    algorithm: str | None = None
    env: str | None = None
    final_reward: float | None = None
    best_reward: float | None = None
    iterations: int | None = None
    timesteps: int | None = None
    duration_s: float | None = None
    checkpoint_path: str | None = None
    # The run this one was warm-started from (``restore_from: rlq://<parent_request_id>``).
    parent_request_id: str | None = None
    eval_reward: float | None = None
    replay_path: str | None = None
    reward_curve_url: str | None = None
    error: str | None = None
    portal_url: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    finished_at: datetime = Field(default_factory=utcnow)
    # True when the compute twin reported the run: nothing was trained, the figures are made up.
    simulated: bool = False


class Delivery(BaseModel):
    """One notification target's outcome."""

    target: str
    ok: bool
    attempts: int = 0
    status_code: int | None = None
    error: str | None = None
    at: datetime = Field(default_factory=utcnow)


class RunRecord(BaseModel):
    """What rlq knows about one request; ``version`` guards every conditional update."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    state: RunState = RunState.received
    request: TrainingRequest | None = None
    backend: str | None = None
    run_id: str | None = None
    message_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    progress_at: datetime | None = None
    stop_reason: StopReason | None = None
    error: str | None = None
    portal_url: str | None = None
    completion: CompletionMessage | None = None
    published_at: datetime | None = None
    notified_at: datetime | None = None
    deliveries: list[Delivery] = Field(default_factory=list)
    cancel_requested: bool = False
    poll_failures: int = 0
    # When the backend first failed to answer a status call in the current streak (None: it answers).
    unreachable_since: datetime | None = None
    claimed_at: datetime | None = None
    # What a ``provisioning`` run waits for (a cluster being created); the poller submits it when ready.
    compute_pending: str | None = None
    deferrals: int = 0
    # The run whose final checkpoint this one restored (``restore_from: rlq://<parent_request_id>``).
    parent_request_id: str | None = None
    # Compact reward curve for runs whose metrics file is not local: [iteration, timesteps, reward].
    curve: list[tuple[int, int, float | None]] = Field(default_factory=list)
    version: int = 0

    @property
    def status(self) -> Status | None:
        if self.completion is not None:
            return self.completion.status
        return STATUS_OF.get(self.state)


# --- error rendering -------------------------------------------------------------------------


def field_errors(err: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{field, message}]`` with dotted field paths a person can find."""
    out = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__") or "(body)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it (see the request schema in the README)"
        elif e["type"] == "literal_error":
            msg = f"{e.get('input')!r} is not allowed; {msg[0].lower()}{msg[1:]}"
        elif e["type"] == "missing":
            msg = "field required"
        elif e["type"] in ("int_type", "float_type", "bool_type") and isinstance(
            e.get("input"), (bool, str, float)
        ):
            want = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}[
                e["type"]
            ]
            msg = f"{json.dumps(e['input'])[:40]} is not allowed; expected {want}"
        out.append({"field": loc, "message": msg})
    return out


class DuplicateKey(ValueError):
    """A JSON object names the same key twice; ``field`` is the dotted path of the repeated key."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.message = (
            "this key appears more than once in the same JSON object; give it once "
            "(parsers disagree on which copy wins)"
        )
        super().__init__(f"{field}: {self.message}")


class _Repeated(dict):  # type: ignore[type-arg]
    """A decoded object that had repeated keys (``repeated`` names them), found after decoding."""

    repeated: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key in obj and key not in repeated:
            repeated.append(key)
        obj[key] = value
    if not repeated:
        return obj
    marked = _Repeated(obj)
    marked.repeated = repeated
    return marked


def _first_repeated(obj: Any, path: str = "") -> str | None:
    if isinstance(obj, _Repeated):
        return f"{path}.{obj.repeated[0]}" if path else obj.repeated[0]
    items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = _first_repeated(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def load_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses an object with a repeated key (:class:`DuplicateKey`, naming it).

    The one parser for request bodies (queue intake, the HTTP API, request files): a body whose
    keys repeat means different things to parsers that keep the first copy and those that keep
    the last, which is how a value slips past validation.
    """
    value = json.loads(text, object_pairs_hook=_pairs)
    where = _first_repeated(value)
    if where is not None:
        raise DuplicateKey(where)
    return value


def parse_request(
    body: bytes | str | dict[str, Any], *, default_id: str | None = None, max_bytes: int = 256 * 1024
) -> TrainingRequest:
    """Decode and validate a request body; raise :class:`InvalidRequest` naming each bad field."""
    if isinstance(body, (bytes, bytearray)):
        if len(body) > max_bytes:
            raise InvalidRequest(
                [{"field": "(body)", "message": f"body is {len(body)} bytes; the limit is {max_bytes}"}]
            )
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRequest(
                [{"field": "(body)", "message": f"not UTF-8 text ({err.reason} at byte {err.start})"}]
            ) from None
    if isinstance(body, str):
        if len(body.encode("utf-8", "surrogatepass")) > max_bytes:
            raise InvalidRequest([{"field": "(body)", "message": f"body is larger than {max_bytes} bytes"}])
        try:
            body = load_json(body)
        except RecursionError:
            raise InvalidRequest([{"field": "(body)", "message": "JSON nested too deeply"}]) from None
        except DuplicateKey as err:
            raise InvalidRequest([{"field": err.field, "message": err.message}]) from None
        except ValueError as err:
            raise InvalidRequest([{"field": "(body)", "message": f"malformed JSON: {err}"}]) from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            [{"field": "(body)", "message": f"expected a JSON object, got {type(body).__name__}"}]
        )
    if _depth(body) > 8:
        raise InvalidRequest([{"field": "(body)", "message": "JSON nested deeper than 8 levels"}])
    where = _unencodable(body)
    if where is not None:
        # A lone surrogate (``"\ud800"``) parses but can never be stored or sent as UTF-8.
        raise InvalidRequest(
            [{"field": where, "message": "text contains an unpaired surrogate (not valid Unicode)"}]
        )
    data = dict(body)
    if data.get("request_id") is None and default_id is not None:
        data["request_id"] = default_id
    try:
        return TrainingRequest.model_validate(data)
    except ValidationError as err:
        raise InvalidRequest(field_errors(err)) from None


def _unencodable(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first key or string value that is not encodable as UTF-8."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(body)"
        return None
    items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _unencodable(key) is not None:
            return path or "(body)"
        found = _unencodable(value, here)
        if found is not None:
            return found
    return None


def _depth(obj: Any, level: int = 0) -> int:
    if level > 8:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level
