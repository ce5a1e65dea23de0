"""Settings: parsed once, from the environment (``RLQ_*``) or a ``.env`` file, into one typed object.

Defaults run the whole flow on one machine: SQLite queue and store under ``data_dir`` and a local
Ray head on 127.0.0.1. Every duration carries its unit in its name.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contracts.environments import EnvironmentCatalog
from shared.contracts.request import NAME_RE
from shared.contracts.vm_sizes import DEFAULT_HEAD_VM_SIZE, DEFAULT_WORKER_VM_SIZE, check_vm_size

QUEUE_NAME = "training-requests"
TOPIC_NAME = "training-completed"
SUBSCRIPTION_NAME = "notifier"
# The environment catalog of local mode when RLQ_ENV_CATALOG is unset: the example package.
EXAMPLE_ENV_CATALOG = Path(__file__).resolve().parent.parent / "docs" / "examples" / "envs" / "catalog.json"
EVERY_TEAM = "*"  # RLQ_TEAM_QUOTAS' entry for every team it does not name


class TeamQuota(BaseModel):
    """One team's caps (docs/teams.md); an absent cap does not hold the team back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int | None = Field(None, ge=1, strict=True, description="Its runs in flight at once.")
    gpu_hours_per_day: float | None = Field(
        None, gt=0, allow_inf_nan=False, strict=True, description="GPU-hours its runs may use per UTC day."
    )


def load_team_quotas(source: str | None) -> dict[str, TeamQuota]:
    """RLQ_TEAM_QUOTAS: JSON (``{"team-a": {"max_in_flight": 2, "gpu_hours_per_day": 8}, "*": {…}}``)
    or the path of a file holding it; None: no team has a cap. A ValueError names the entry."""
    if source is None or not source.strip():
        return {}
    text = source if source.lstrip()[:1] in ("{", "[") else _read_quota_file(source)
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ValueError(f"RLQ_TEAM_QUOTAS: not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(
            'RLQ_TEAM_QUOTAS: expected an object of teams, e.g. {"team-a": {"max_in_flight": 2}}'
        )
    quotas: dict[str, TeamQuota] = {}
    for team, caps in raw.items():
        if team != EVERY_TEAM and not re.match(NAME_RE, team):
            raise ValueError(
                f"RLQ_TEAM_QUOTAS: team {team!r} is not allowed; a team is 1-64 letters, digits, _ or -, "
                f'or "{EVERY_TEAM}" for every team not named'
            )
        try:
            quotas[team] = TeamQuota.model_validate(caps)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"RLQ_TEAM_QUOTAS: {team}{'.' + where if where else ''}: {first['msg']}; allowed: "
                "max_in_flight (an integer >= 1), gpu_hours_per_day (a number > 0)"
            ) from None
    return quotas


def _read_quota_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ValueError(
            f"RLQ_TEAM_QUOTAS: neither JSON nor a readable file: {path} ({err.strerror})"
        ) from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RLQ_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path(".rlq"), description="Local state: SQLite files, run outputs.")
    local_mode: bool = Field(True, description="One-machine mode: loopback webhooks allowed.")

    # --- queueing ----------------------------------------------------------------------------
    queue_name: str = QUEUE_NAME
    topic_name: str = TOPIC_NAME
    subscription_name: str = SUBSCRIPTION_NAME
    max_delivery_count: int = Field(10, ge=1, le=2000)
    lock_duration_s: float = Field(
        300.0,
        gt=0,
        description=(
            "The intake queue's message lock (Service Bus lockDuration, PT5M in infra/modules/servicebus.bicep; "
            "infra writes RLQ_LOCK_DURATION_S from the same parameter). The submission claim lease is "
            "derived from it (claim_lease_s)."
        ),
    )
    duplicate_detection_window_s: float = Field(600.0, ge=0)
    defer_delay_s: float = Field(60.0, gt=0, description="Redelivery delay when over max_in_flight.")
    intake_retry_base_s: float = Field(
        5.0, gt=0, description="First re-send delay after a transient intake failure; doubles per retry."
    )
    intake_retry_max_delay_s: float = Field(300.0, gt=0, description="Longest delay between two re-sends.")
    intake_retry_attempts: int = Field(
        10, ge=0, description="Re-sends after transient intake failures before the dead-letter queue."
    )

    # --- backends ----------------------------------------------------------------------------
    backend: Literal["ray", "azureml", "azureml_v1", "twin"] = "ray"
    allow_twin: bool = Field(
        False,
        description="Allow RLQ_BACKEND=twin (simulated jobs, nothing trained) outside local mode.",
    )
    store: Literal["sqlite", "table"] = "sqlite"
    broker: Literal["sqlite", "servicebus"] = "sqlite"

    ray_address: str | None = Field(
        None, description="Ray Jobs API address (http://host:8265). None: a local head on 127.0.0.1."
    )
    ray_dashboard_port: int = 8265
    ray_auth_token: SecretStr | None = Field(None, description="Ray token auth; None: read Ray's own.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs the local head offers Ray.")

    env_catalog: str | None = Field(
        None,
        description="The environment packages this deployment trusts (docs/environments.md): a JSON file's "
        "path, or the JSON itself. Unset: the example package in local mode, none otherwise.",
    )
    _environment_catalog: EnvironmentCatalog = PrivateAttr(default_factory=EnvironmentCatalog)

    # --- polling -----------------------------------------------------------------------------
    poll_schedule: str = Field("*/10 * * * * *", description="NCRONTAB (6 fields) of the poller.")
    poll_concurrency: int = Field(128, ge=1, le=1024)
    poll_tick_budget_s: float = Field(50.0, gt=0)
    stall_timeout_s: float = Field(1800.0, gt=0, description="No new iteration for this long: stalled.")
    max_attempts: int = Field(
        3, ge=1, le=100, description="Jobs a run may take: a job lost with its machines resumes as the next."
    )
    checkpoint_every_s: int = Field(
        300, ge=0, description="The trainer checkpoints after this many seconds of training (0: off)."
    )
    status_timeout_s: float = Field(20.0, gt=0)
    unreachable_timeout_s: float = Field(
        1800.0, gt=0, description="A run whose backend answers no status call for this long fails."
    )

    # --- guardrails --------------------------------------------------------------------------
    max_in_flight: int = Field(4, ge=1, description="Global cap on runs submitted and not terminal.")
    max_nodes_per_request: int = Field(16, ge=1)
    max_gpus_per_request: int = Field(4, ge=0)
    max_run_duration_s: int = Field(4 * 3600, ge=60)
    default_run_duration_s: int = Field(3600, ge=60)
    max_body_bytes: int = Field(256 * 1024, ge=1024)

    # --- teams -------------------------------------------------------------------------------
    team_quotas: str | None = Field(
        None,
        description='Per-team caps (docs/teams.md): JSON, {"team-a": {"max_in_flight": 2, "gpu_hours_per_day": 8}, '
        '"*": {...}} ("*": every team not named), or a JSON file\'s path. Unset: no team caps.',
    )
    _team_quotas: dict[str, TeamQuota] = PrivateAttr(default_factory=dict)
    priority_aging_s: float = Field(
        1800.0,
        gt=0,
        description="A deferred request moves up one priority level (low, normal, high) per this many "
        "seconds since it was received, so none waits forever behind newer, higher ones.",
    )

    # --- notifications -----------------------------------------------------------------------
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="whsec_… secrets; the first signs, all are accepted."
    )
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Endpoints every run notifies."
    )
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_s: float = Field(1.0, ge=0)
    public_base_url: str = Field("http://127.0.0.1:7071", description="Links in messages and cards.")
    csrf_secret: SecretStr | None = Field(
        None, description="Signs the dashboard's form tokens; None: a key kept in data_dir/csrf.key."
    )

    # --- telemetry (shared/telemetry_export.py) ----------------------------------------------
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        "none",
        description="Where traces, metrics and logs go when APPLICATIONINSIGHTS_CONNECTION_STRING is unset: "
        "none (nothing exported), console (stdout), otlp (OTEL_EXPORTER_OTLP_ENDPOINT).",
    )

    # --- Azure -------------------------------------------------------------------------------
    servicebus_connection: SecretStr | None = None
    servicebus_namespace: str | None = Field(None, description="<name>.servicebus.windows.net")
    table_connection: SecretStr | None = None
    table_account_url: str | None = None
    table_name: str = "rlqruns"
    azureml_subscription_id: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    azureml_vnet: str | None = None
    azureml_subnet: str = "default"
    azureml_vnet_resource_group: str | None = None
    head_cluster: str = "head-gpu"
    head_vm_size: str = DEFAULT_HEAD_VM_SIZE
    head_min_nodes: int = 0
    head_max_nodes: int = 2
    worker_cluster: str = "worker-cpu"
    worker_vm_size: str = DEFAULT_WORKER_VM_SIZE
    worker_min_nodes: int = 0
    worker_max_nodes: int = 4
    # 0: a request naming no worker cluster runs as one job on the head cluster (docs/azure.md)
    worker_node_count: int = 0
    rejected_queue_name: str = Field(
        "training-rejected", description="Service Bus queue keeping requests that can never run."
    )
    azureml_base_image: str = Field(
        "mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04",
        description="Docker base image of the Azure ML head and workers (one image: Ray needs equal versions).",
    )
    # SDK v2: the clusters' user-assigned identity (resource id; empty: system-assigned) and its client
    # id, and where the nodes read the Ray token (the workspace Key Vault; names only, never the token).
    azureml_cluster_identity: str | None = None
    azureml_cluster_identity_client_id: str | None = None
    azureml_key_vault_uri: str | None = None
    azureml_ray_token_secret: str = "rlq-ray-token"
    azureml_nsg_check: Literal["enforce", "warn", "off"] = Field(
        "enforce",
        description="Check the aml subnet's NSG before submitting; enforce: a missing rule fails the run.",
    )
    azureml_node_public_ip: bool = Field(
        False,
        description="The clusters' nodes have public IPs (the NSG check then wants inbound TCP 44224 from "
        "AzureMachineLearning); default: none, as Azure ML's current VNet guidance.",
    )
    azureml_nsg_batch_inbound: bool = Field(
        False,
        description="The NSG check also wants the seed's inbound TCP 29876-29877 from BatchNodeManagement "
        "(older Azure ML guidance).",
    )

    @field_validator("head_vm_size", "worker_vm_size")
    @classmethod
    def _vm_size(cls, v: str) -> str:
        return check_vm_size(v, in_request=False)  # a retired size fails at start-up, naming its replacements

    @model_validator(mode="after")
    def _twin_only_where_allowed(self) -> Settings:
        if self.backend == "twin" and not self.local_mode and not self.allow_twin:
            raise ValueError(
                "RLQ_BACKEND=twin is the compute twin: it simulates jobs and trains nothing, so outside "
                "local mode (RLQ_LOCAL_MODE=false) it is refused; set RLQ_ALLOW_TWIN=true to use it anyway, "
                "or pick a real backend (RLQ_BACKEND: ray, azureml)"
            )
        return self

    @model_validator(mode="after")
    def _load_environment_catalog(self) -> Settings:
        source = self.env_catalog
        if source is None and self.local_mode and EXAMPLE_ENV_CATALOG.is_file():
            source = str(EXAMPLE_ENV_CATALOG)
        self._environment_catalog = EnvironmentCatalog.load(source)  # a bad catalog stops start-up
        return self

    @property
    def environment_catalog(self) -> EnvironmentCatalog:
        return self._environment_catalog

    @model_validator(mode="after")
    def _load_team_quotas(self) -> Settings:
        self._team_quotas = load_team_quotas(self.team_quotas)  # a bad entry stops start-up, named
        return self

    def team_quota(self, team: str) -> TeamQuota:
        """``team``'s caps: its own entry, else the ``"*"`` entry, else none."""
        return self._team_quotas.get(team) or self._team_quotas.get(EVERY_TEAM) or TeamQuota()

    @property
    def has_team_quotas(self) -> bool:
        return bool(self._team_quotas)

    @field_validator("webhook_secrets", "webhook_urls", "webhook_allow_hosts", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [s.strip() for s in v.replace(",", " ").split() if s.strip()]
        return v

    @property
    def claim_lease_s(self) -> float:
        """How long a submission claim holds off other copies of the request: the message lock.

        A live claimer renews its claim right before the submit call; a dead claimer's own message
        comes back only after its lock ran out, and takes the claim over as a redelivery of the
        claiming message (see shared.core.intake.Intake._claim), so the lease never has to be shorter.
        """
        return self.lock_duration_s

    @property
    def queue_db(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def store_db(self) -> Path:
        return self.data_dir / "runs.sqlite3"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
