"""The training request: the JSON body of a ``training-requests`` message, its field patterns, and
what in a schema-valid request collides with the deployment (:func:`resource_problems`).

Every model rejects unknown keys, and every validation error names the field and what is allowed
(:func:`shared.contracts.parsing.field_errors`). The allow-lists it checks against live in
:mod:`shared.contracts.catalog`, the VM table in :mod:`shared.contracts.vm_sizes`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import AnyUrl, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from shared.contracts.base import Strict
from shared.contracts.catalog import (
    BOOL_CONFIG_KEYS,
    BOOL_MODEL_KEYS,
    CONFIG_BOUNDS,
    CONFIG_KEYS,
    CPUS_PER_RUNNER_KEYS,
    ENV_RUNNER_KEYS,
    ENVS_PER_RUNNER_KEYS,
    MAX_ENVS,
    MAX_LAYER_WIDTH,
    MAX_LAYERS,
    MODEL_KEYS,
    STOP_KEYS,
    Algorithm,
)
from shared.contracts.environments import (
    MAX_RETURN,
    algorithm_env_problem,
    check_env_config,
    env_id_problem,
)
from shared.contracts.models import (
    DEFAULT_EVAL_EPISODES,
    MAX_EVAL_EPISODES,
    MODEL_SCHEME,
    PromotionRule,
)
from shared.contracts.vm_sizes import (
    DEFAULT_HEAD_VM_SIZE,
    DEFAULT_WORKER_VM_SIZE,
    VM_SIZES,
    check_vm_size,
    substitute_vm_size,
)

log = logging.getLogger(__name__)

_NOT_A_NUMBER = "true / false is not allowed here; expected a number"

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
# Who a request is for and how urgent it is, when the service is full (docs/teams.md).
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high")  # lowest first: the index is the level
DEFAULT_TEAM = "default"  # the team of a request that names none

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
    """What head and worker clusters share: an allow-listed VM size, a sane node range and the VM
    tier (``low_priority``: Azure ML's preemptible nodes, a lost job resumes from its checkpoint)."""

    tier: Literal["dedicated", "low_priority"] = "dedicated"

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


class Champion(Strict):
    """The champion a run is judged against: its version and checkpoint (resolved at intake)."""

    version: int = Field(ge=1, strict=True)
    checkpoint_path: str = Field(max_length=1024)

    @field_validator("checkpoint_path")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _checkpoint_uri(v, "champion.checkpoint_path")


class TrainingRequest(Strict):
    """A request to train: the JSON body of a ``training-requests`` message."""

    request_id: str = Field(..., pattern=ID_RE)
    experiment: str = Field("rlq", pattern=NAME_RE)
    algorithm: Algorithm = "IMPALA"
    env: str = "PongNoFrameskip-v4"
    # The environment's keyword arguments (gymnasium.make's kwargs), bounded in
    # shared/contracts/environments.py; the trainer builds the env with them before Ray starts.
    env_config: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    stop: Stop = Field(default_factory=lambda: Stop(episode_reward_mean=18, time_total_s=3600))
    compute: Compute = Field(default_factory=Compute)
    restore_from: str | None = Field(None, max_length=1024)
    notify: Notify = Field(default_factory=Notify)
    reply_to: str | None = Field(None, pattern=QUEUE_RE)
    tags: dict[str, str] = Field(default_factory=dict, max_length=32)
    # The team whose quota the run counts against (RLQ_TEAM_QUOTAS); and its place in the line
    # when the service is full: high before normal before low, a waiting request aging upwards.
    team: str = DEFAULT_TEAM
    priority: Priority = "normal"
    evaluate: Evaluate | None = None
    # The model this run trains (docs/models.md); None: the experiment's name (:attr:`model_name`).
    model: str | None = Field(None, pattern=NAME_RE)
    # How its version may become the model's champion (shared/contracts/models.py PromotionRule).
    promote: PromotionRule = "if_better"
    # ``if_better``: the candidate's mean must exceed the champion's by more than this (>= 0).
    min_improvement: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False, strict=True)
    # Greedy episodes candidate and champion are each played on at the end of the run.
    eval_episodes: int = Field(DEFAULT_EVAL_EPISODES, ge=1, le=MAX_EVAL_EPISODES, strict=True)
    # Set by rlq at intake, never by a producer (what one sends is replaced): the model's champion
    # when the request was accepted, whose checkpoint the trainer plays against the candidate.
    champion: Champion | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, v: str, info: ValidationInfo) -> str:
        # ``algorithm`` is validated first (declared first): a combination that cannot work
        problem = env_id_problem(v) or algorithm_env_problem(str(info.data.get("algorithm", "")), v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("env_config")
    @classmethod
    def _env_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_env_config(v)

    @field_validator("config")
    @classmethod
    # C901: one refusal per rule a config value breaks (unknown key, boolean, type, NaN, size), in
    # the order docs/guarantees.md's field audit lists them; each names the key it refuses.
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:  # noqa: C901
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

    @field_validator("team")
    @classmethod
    def _team(cls, v: str) -> str:
        if not re.match(NAME_RE, v):
            raise ValueError(
                f"{v[:70]!r} is not allowed; a team is 1-64 letters, digits, _ or -, starting with a "
                "letter or digit"
            )
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

    @property
    def restore_model(self) -> str | None:
        """The model named by ``restore_from: model://<name>`` (its champion's run), else None."""
        if self.restore_from and self.restore_from.startswith(MODEL_SCHEME):
            return self.restore_from.removeprefix(MODEL_SCHEME)
        return None

    @property
    def model_name(self) -> str:
        """The model this run registers under: ``model``, else the experiment's name."""
        return self.model or self.experiment

    @field_validator("restore_from")
    @classmethod
    def _restore(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith(RESTORE_SCHEME):
            if not re.match(ID_RE, v.removeprefix(RESTORE_SCHEME)):
                raise ValueError(f"{v!r}: expected rlq://<request_id> of an earlier run")
            return v
        if v.startswith(MODEL_SCHEME):
            if not re.match(NAME_RE, v.removeprefix(MODEL_SCHEME)):
                raise ValueError(f"{v!r}: expected model://<name> of a model (letters, digits, _ -, max 64)")
            return v
        return _checkpoint_uri(v, "restore_from")

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


def _checkpoint_uri(v: str, field: str) -> str:
    """A checkpoint URI a job may read (``field`` names it in the message): one of the schemes a
    backend restores from, no path traversal, no shell metacharacters."""
    if not re.match(r"^(file|azureml|abfss|https)://", v):
        raise ValueError(
            "must be a URI: rlq://<request_id> (an earlier run's final checkpoint), "
            "model://<name> (a model's champion), file://, azureml://, abfss:// or https://"
            if field == "restore_from"
            else "must be a checkpoint URI: file://, azureml://, abfss:// or https://"
        )
    decoded = unquote(v)  # %2e%2e is '..' to whoever decodes the URI later
    if ".." in re.split(r"[/\\]", unquote(v.split("?")[0])) or any(
        c in text for text in (v, decoded) for c in "\x00\n\r;`$|&<>\\"
    ):
        raise ValueError("path traversal and shell metacharacters are not allowed")
    return v


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
    compute = request.compute
    if (
        compute.head is not None
        and compute.workers is not None
        and compute.head.name.lower() == compute.workers.name.lower()
    ):
        problems.append(
            {
                "field": "compute.workers.name",
                "message": f"{compute.workers.name!r} is also compute.head.name; one cluster cannot be both, "
                "allowed: a name other than the head's",
            }
        )
    for part, cluster in (("head", compute.head), ("workers", compute.workers)):
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
