"""Azure Machine Learning (SDK v2, ``azure-ai-ml``) backend: Ray on one or two ``AmlCompute`` clusters.

``RLQ_BACKEND=azureml``. Per request, one or two ``command()`` jobs that start Ray themselves
through ``trainer/bootstrap.py``:

* the **head job** on the head cluster (``instance_count`` = ``compute.head.node_count``, 1 unless
  the request says more): rank 0 runs ``ray start --head`` (token auth on), publishes the head's
  address as an MLflow tag on its own run (an address, never a secret), then runs the trainer,
  whose learner is placed on a head node; other ranks join it;
* with worker nodes (``compute.workers.node_count`` > 0, the seed's topology), the **worker job** on
  the worker cluster (``instance_count`` = worker nodes), submitted by the poller once the head's
  address is there: each node joins the head and hosts env runners. A request naming no worker
  cluster (and a deployment whose ``RLQ_WORKER_NODE_COUNT`` is 0, the default) runs as the head
  job alone: no second cluster, no VNet between clusters, no wait for workers.

What the service relies on, and how it is kept:

* **Never blocking a Function.** ``ensure_compute`` creates a missing cluster with
  ``compute.begin_create_or_update`` and does not wait on the poller; until the request's clusters report
  ``Succeeded`` it answers :class:`~shared.ports.ComputePending` and the run stays ``provisioning``
  (the poller asks again). A cluster that fails to provision fails the run with Azure's reason; one
  with another VM size, a smaller max or another VNet is reported, never resized.
* **One job per request.** Job names are unique in a workspace and derived from ``request_id``
  (:func:`job_names`): ``find`` is a ``jobs.get``; ``submit`` looks the job up (``jobs.get``) and
  adopts it when it exists, and only then creates it (adopting it again if a racing process won
  the name). A redelivered request or a poller that died between creating a job and recording it
  never starts a second one.
* **Cheap polling.** One ``jobs.get`` of the head per tick; at most one more call (MLflow metrics,
  or the worker job's status) every ``detail_every`` ticks, so metrics are read less often than
  status.
* **The secret stays out of the job.** The Ray token is read on the nodes from the workspace Key
  Vault with the clusters' managed identity: the jobs carry the vault and secret *names* only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.adapters.compute.azureml.clusters import (
    Clusters,
    ComputeInfo,
    NsgGuard,
    check_existing_cluster,
    job_timeout_s,
    network_client_from_settings,
    resolve_clusters,
    worker_shm_size,
    workspace_coordinates,
)
from shared.adapters.compute.azureml.environment import (
    CONDA_FILE,
    TRAINER_DIR,
    environment_version,
    stage_trainer,
)
from shared.adapters.compute.azureml.errors import readable, sdk_errors
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress
from shared.contracts.trainer import (
    ARGV_ENV,
    JobEnd,
    TrainerSummary,
    build_argv,
    seed_cluster_config,
)
from shared.contracts.vm_sizes import VM_SIZES
from shared.errors import ComputeError
from shared.ports import Checkpoint, ComputePending, JobState, JobStatus
from shared.settings import Settings
from trainer import contract

log = logging.getLogger(__name__)

RUN_TAG = "rlq_request_id"
ROLE_TAG = "rlq_role"
COMPUTE_TAG = (
    "rlq_compute"  # the request's own compute section, so a fresh process resolves the same clusters
)
HEAD_ADDRESS_TAG = contract.HEAD_ADDRESS_TAG  # set by trainer/bootstrap.py on the head job's MLflow run
RAY_PORT = 6379
HEAD_SHM_SIZE = "24g"
CHECKPOINTS_OUTPUT = "checkpoints"
RESTORE_INPUT = "restore"
CHAMPION_INPUT = "champion"  # the model's champion checkpoint, played against the run's (docs/models.md)
RESUME_INPUT = "resume"  # attempt k > 1: attempt k - 1's checkpoints output
IDLE_BEFORE_SCALE_DOWN_S = 1800
ENVIRONMENT_NAME = "rlq-trainer"

# Every v2 job status (azure.ai.ml._restclient ... JobStatus) -> JobState. CancelRequested,
# NotResponding and Paused are not terminal: the poller keeps asking, and its stall detector covers a
# run that stays silent. NotResponding may go back to any earlier state (the enum's own note).
STATUS_TO_STATE: dict[str, JobState] = {
    "NotStarted": "pending",
    "Starting": "pending",
    "Provisioning": "pending",
    "Preparing": "pending",
    "Queued": "pending",
    "Running": "running",
    "Finalizing": "running",
    "CancelRequested": "running",
    "NotResponding": "running",
    "Paused": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Canceled": "stopped",
    "Unknown": "pending",
}
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Canceled"})
RAN_STATUSES = frozenset({"Running", "Finalizing", "NotResponding"})


def job_names(request_id: str, attempt: int = 1) -> tuple[str, str]:
    """(head job, worker job) names: deterministic, valid Azure ML job names, distinct per request id
    and per attempt (``-a<k>`` for attempt k > 1: a run resumed after its job was lost).

    A readable slug of the id (lower case, ``[a-z0-9_-]``) plus a digest of the exact id, so ids
    that differ only in case or punctuation never share a job.
    """
    slug = re.sub(r"[^a-z0-9_-]+", "-", request_id.lower()).strip("-_")[:48] or "run"
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:10]
    base = f"rlq-{slug}-{digest}" + (f"-a{attempt}" if attempt > 1 else "")
    return f"{base}-head", f"{base}-workers"


def worker_job_of(head_name: str) -> str:
    """The worker job's name of head job ``head_name`` (the same attempt's)."""
    return head_name.removesuffix("-head") + "-workers"


# --- what the backend needs from Azure ML and MLflow (the SDK, or the twin) ---------------------


@dataclass(frozen=True)
class RunView:
    """One MLflow run as the poller reads it: latest metric values, the latest step, the tags."""

    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0
    tags: dict[str, str] = field(default_factory=dict)


class RunReader(Protocol):
    """Reads a job's MLflow run (an Azure ML job's name is its MLflow run id)."""

    def get_run(self, run_id: str) -> RunView | None: ...

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The trainer's ``outputs/summary.json`` artifact, when there."""


class MlflowRunReader:
    """:class:`RunReader` on ``mlflow`` + ``azureml-mlflow`` against the workspace's tracking URI."""

    def __init__(self, ml_client: Any) -> None:
        self._ml_client = ml_client
        self._client: Any = None
        self._lock = threading.Lock()

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                ws = self._ml_client.workspaces.get(self._ml_client.workspace_name)
                self._client = MlflowClient(tracking_uri=ws.mlflow_tracking_uri)
            return self._client

    def get_run(self, run_id: str) -> RunView | None:
        try:
            run = self._mlflow().get_run(run_id)
        except Exception as err:
            if "RESOURCE_DOES_NOT_EXIST" in str(err) or "not found" in str(err).lower():
                return None
            raise
        metric_objs = getattr(run.data, "_metric_objs", None) or []
        step = max((int(getattr(m, "step", 0) or 0) for m in metric_objs), default=0)
        return RunView(metrics=dict(run.data.metrics), step=step, tags=dict(run.data.tags))

    def summary(self, run_id: str) -> dict[str, Any] | None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rlq-aml-") as tmp:
            try:
                path = self._mlflow().download_artifacts(run_id, "outputs/summary.json", tmp)
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except Exception as err:  # noqa: BLE001 - the metrics still give the essentials
                log.info("job %s: no readable summary.json (%s)", run_id, type(err).__name__)
                return None
        return data if isinstance(data, dict) else None


def ml_client_from_settings(settings: Settings) -> Any:
    """``MLClient`` with the Function's managed identity (``DefaultAzureCredential``)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    sub, rg, ws = workspace_coordinates(settings)
    return MLClient(DefaultAzureCredential(), subscription_id=sub, resource_group_name=rg, workspace_name=ws)


def _is_not_found(err: BaseException) -> bool:
    return type(err).__name__ == "ResourceNotFoundError" or getattr(err, "status_code", None) == 404


def _is_name_taken(err: BaseException) -> bool:
    """Azure's answer to a job created under a name that exists (UserError, or a 409)."""
    text = str(err).lower()
    return getattr(err, "status_code", None) == 409 or "already exists" in text


@dataclass
class _Tracked:
    """What this process remembers about one head job between ticks (bounded, rebuilt on demand)."""

    ticks: int = 0
    progress: Progress | None = None
    worker_submitted: bool = False
    worker_error: str | None = None
    ran: bool = False  # seen Running (or NotResponding): the job had its nodes
    not_responding: bool = False  # seen NotResponding: Azure lost the job's heartbeat


class AzureMLV2Backend:
    """:class:`shared.ports.ComputeBackend` on ``azure-ai-ml`` command jobs (the run id is the head job's name)."""

    name = "azureml"

    def __init__(
        self,
        *,
        settings: Settings,
        ml_client: Any = None,
        runs: RunReader | None = None,
        network_factory: Callable[[], Any] | None = None,
        trainer_dir: Path | str | None = None,
        detail_every: int = 3,
    ) -> None:
        self.settings = settings
        self._ml_client = ml_client
        self._runs = runs
        self.nsg = NsgGuard(settings, network_factory or (lambda: network_client_from_settings(settings)))
        self.trainer_dir = Path(trainer_dir) if trainer_dir is not None else TRAINER_DIR
        self.detail_every = max(1, detail_every)
        self._lock = threading.Lock()
        self._stage: Path | None = None
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()
        self._requests: OrderedDict[str, TrainingRequest] = OrderedDict()

    @property
    def ml(self) -> Any:
        with self._lock:
            if self._ml_client is None:
                self._ml_client = ml_client_from_settings(self.settings)
            return self._ml_client

    @property
    def runs(self) -> RunReader:
        with self._lock:
            if self._runs is None:
                self._runs = MlflowRunReader(self._ml_client or ml_client_from_settings(self.settings))
            return self._runs

    # --- ComputeBackend ---------------------------------------------------------------------

    def ensure_compute(self, request: TrainingRequest) -> ComputePending | None:
        """Reuse or start creating both clusters (never waiting); pending until both are Succeeded."""
        clusters = self.clusters(request)
        if clusters.workers.node_count > 0 and not clusters.vnet:
            raise ComputeError(
                "a Ray head with worker nodes needs a virtual network that lets them talk: set "
                "RLQ_AZUREML_VNET (and RLQ_AZUREML_SUBNET) or compute.vnet in the request"
            )
        if clusters.vnet:
            self.nsg.check(clusters)
        waiting = [
            self._ensure_cluster(
                clusters.head.name,
                clusters.head.vm_size,
                clusters.head.min_nodes,
                clusters.head.max_nodes,
                clusters.head.node_count,
                clusters,
                tier=clusters.head.tier,
            )
        ]
        if clusters.workers.node_count > 0:
            waiting.append(
                self._ensure_cluster(
                    clusters.workers.name,
                    clusters.workers.vm_size,
                    clusters.workers.min_nodes,
                    clusters.workers.max_nodes,
                    clusters.workers.node_count,
                    clusters,
                    tier=clusters.workers.tier,
                )
            )
        pending = [w for w in waiting if w]
        return ComputePending("; ".join(pending)) if pending else None

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        head, _ = job_names(request_id, attempt)
        job = self._get_job(head)
        return head if job is not None else None

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        """Create the head job (adopting it when the name exists); the worker job follows from ``status``.

        Attempt k > 1 (its job was lost with its machines) is its own job, ``job_names(id, k)``,
        that resumes from the checkpoints attempt k - 1 wrote (:meth:`build_head_job`).
        """
        head_name, _ = job_names(request.request_id, attempt)
        self._remember(request)
        self._create(
            self.build_head_job(request, attempt),
            what=f"head job of {request.request_id} (attempt {attempt})",
        )
        return head_name

    def status(self, run_id: str) -> JobStatus:
        with sdk_errors(f"status of job {run_id}"):
            head = self.ml.jobs.get(run_id)
        aml_status = str(head.status or "Unknown")
        state = STATUS_TO_STATE.get(aml_status)
        if state is None:
            log.warning("job %s has an Azure ML status rlq does not know (%r); pending", run_id, aml_status)
            state = "pending"
        portal = getattr(head, "studio_url", None)
        t = self._track(run_id)
        t.ticks += 1
        t.ran = t.ran or aml_status in RAN_STATUSES
        t.not_responding = t.not_responding or aml_status == "NotResponding"
        worker_name = self._worker_name(run_id, head)
        if aml_status in TERMINAL_STATUSES:
            return self._final(run_id, head, aml_status, state, portal, worker_name, t)
        if state == "running" and worker_name and not t.worker_submitted:
            self._maybe_submit_workers(run_id, head, worker_name, t)  # the one extra call this tick
        elif t.ticks % self.detail_every == 0:
            if worker_name and t.worker_submitted and (t.ticks // self.detail_every) % 2 == 0:
                self._check_workers(worker_name, t)
            else:
                view = self._read_run(run_id)
                if view is not None:
                    t.progress = _progress(view) or t.progress
        return JobStatus(state=state, progress=t.progress, portal_url=portal, error=t.worker_error)

    def cancel(self, run_id: str) -> None:
        """``jobs.begin_cancel`` for the head job and its worker job (not waiting on the pollers)."""
        head_name = run_id
        worker_name = head_name[: -len("-head")] + "-workers" if head_name.endswith("-head") else None
        for name in (head_name, worker_name):
            if name:
                self._cancel(name)

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the workspace answers, in one ``workspaces.get``
        of the configured workspace with the function's identity (the read the MLflow reader
        makes anyway; AzureML Data Scientist on the workspace). Nothing is created or started.
        The SDK takes no per-call timeout: the readiness gate (:mod:`shared.core.readiness`) bounds
        how long the answer waits for it."""
        ml = self.ml
        name = str(getattr(ml, "workspace_name", "") or self.settings.azureml_workspace)
        with sdk_errors(f"health check of workspace {name}"):
            ws = ml.workspaces.get(name)
        group = getattr(ws, "resource_group", None) or getattr(ml, "resource_group_name", "")
        return f"Azure ML workspace {getattr(ws, 'name', None) or name} in {group} answers"

    def close(self) -> None:
        import shutil

        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    # --- building blocks (public: the tests serialise what they return) -----------------------

    def clusters(self, request: TrainingRequest) -> Clusters:
        return resolve_clusters(
            self.settings,
            request,
            workspace_resource_group=lambda: str(getattr(self.ml, "resource_group_name", "") or ""),
        )

    def build_compute(
        self,
        *,
        name: str,
        vm_size: str,
        min_nodes: int,
        max_nodes: int,
        clusters: Clusters,
        tier: str = "dedicated",
    ) -> Any:
        """The ``AmlCompute`` entity for a missing cluster (no public IPs by default, SSH off, in the VNet).

        ``tier`` is the SDK's ``AmlCompute(tier=...)``: ``dedicated`` or ``low_priority`` (sent as
        the REST ``vmPriority`` ``Dedicated`` / ``LowPriority``; docs/azure.md).
        """
        from azure.ai.ml.entities import (
            AmlCompute,
            IdentityConfiguration,
            ManagedIdentityConfiguration,
            NetworkSettings,
        )

        settings = self.settings
        network = None
        if clusters.vnet:
            ws_rg = settings.azureml_resource_group
            subnet = clusters.subnet
            vnet_name: str | None = clusters.vnet
            if (
                clusters.vnet_resource_group
                and ws_rg
                and clusters.vnet_resource_group.lower() != ws_rg.lower()
            ):
                # another resource group: the subnet's full id, vnet_name left out (the SDK's rule)
                subnet = (
                    f"/subscriptions/{settings.azureml_subscription_id}/resourceGroups/{clusters.vnet_resource_group}"
                    f"/providers/Microsoft.Network/virtualNetworks/{clusters.vnet}/subnets/{clusters.subnet}"
                )
                vnet_name = None
            network = NetworkSettings(vnet_name=vnet_name, subnet=subnet)
        if settings.azureml_cluster_identity:
            identity = IdentityConfiguration(
                type="user_assigned",
                user_assigned_identities=[
                    ManagedIdentityConfiguration(resource_id=settings.azureml_cluster_identity)
                ],
            )
        else:
            identity = IdentityConfiguration(type="system_assigned")
        with sdk_errors("build the cluster"):
            return AmlCompute(
                name=name,
                size=vm_size,
                min_instances=min_nodes,
                max_instances=max_nodes,
                idle_time_before_scale_down=IDLE_BEFORE_SCALE_DOWN_S,
                network_settings=network,
                identity=identity,
                ssh_public_access_enabled=False,
                # inside the VNet: none unless RLQ_AZUREML_NODE_PUBLIC_IP (what the NSG check assumes)
                enable_node_public_ip=settings.azureml_node_public_ip if clusters.vnet else True,
                tier=tier,
                tags={"managed-by": "rlq"},
            )

    def job_argv(
        self, request: TrainingRequest, clusters: Clusters | None = None, *, resume: bool = False
    ) -> list[str]:
        """The trainer's argv: EnvRunners on the workers' vCPUs, the head's GPUs (the seed's defaults).

        With worker nodes, the EnvRunners are placed on them only (``trainer/bootstrap.py`` and the
        trainer's placement), so their default number is the workers' vCPUs: the seed's "all vCPUs
        minus one" would ask for runners no worker can take. Without workers, the seed's rule.
        """
        clusters = clusters or self.clusters(request)
        config = dict(request.config)
        if clusters.workers.node_count > 0 and not {"num_workers", "num_env_runners"} & config.keys():
            config["num_env_runners"] = (
                clusters.workers.node_count * VM_SIZES[clusters.workers.vm_size.upper()].cpus
            )
        config = seed_cluster_config(config, total_cpus=clusters.total_cpus, head_gpus=clusters.head_gpus)
        return build_argv(
            request,
            output_dir="outputs",
            config=config,
            ray_address=f"localhost:{RAY_PORT}",
            resume=resume,
            env_module=package.module
            if (package := self.settings.environment_catalog.entry_for(request.env))
            else None,
        )

    def environment(self) -> Any:
        from azure.ai.ml.entities import Environment

        source = self.stage_source()
        return Environment(
            name=ENVIRONMENT_NAME,
            version=environment_version((source / CONDA_FILE).read_text()),
            image=self.settings.azureml_base_image,
            conda_file=str(source / CONDA_FILE),
        )

    def build_head_job(self, request: TrainingRequest, attempt: int = 1) -> Any:
        """The head ``command()`` job for ``request`` (nothing is sent).

        Attempt k > 1 mounts attempt k - 1's checkpoints output (:meth:`checkpoints_uri`) as the
        ``resume`` input: the bootstrap copies it into this job's own, and the trainer's
        ``--resume`` starts from the newest checkpoint there that loads.
        """
        from azure.ai.ml import Input, MpiDistribution, Output, command

        clusters = self.clusters(request)
        head_name, _ = job_names(request.request_id, attempt)
        argv = self.job_argv(request, clusters, resume=attempt > 1)
        inputs: dict[str, Any] = {}
        cmd = f"python trainer/bootstrap.py --role head --checkpoints ${{{{outputs.{CHECKPOINTS_OUTPUT}}}}}"
        if attempt > 1:
            previous = self.checkpoints_uri(job_names(request.request_id, attempt - 1)[0])
            inputs[RESUME_INPUT] = Input(type="uri_folder", path=previous, mode="ro_mount")
            cmd += f" --resume-from ${{{{inputs.{RESUME_INPUT}}}}}"
        if request.restore_from and request.restore_from.startswith("azureml://"):
            inputs[RESTORE_INPUT] = Input(type="uri_folder", path=request.restore_from, mode="ro_mount")
            cmd += f" --restore ${{{{inputs.{RESTORE_INPUT}}}}}"
        elif request.restore_from:
            raise ComputeError(
                f"restore_from ({request.restore_from[:80]}): Azure ML jobs restore from an azureml:// "
                "folder (a checkpoint_path of an earlier run, or rlq://<request_id>)"
            )
        if request.champion and request.champion.checkpoint_path.startswith("azureml://"):
            inputs[CHAMPION_INPUT] = Input(
                type="uri_folder", path=request.champion.checkpoint_path, mode="ro_mount"
            )
            cmd += f" --champion ${{{{inputs.{CHAMPION_INPUT}}}}}"
        env = {
            ARGV_ENV: json.dumps(argv),
            "RLQ_RAY_PORT": str(RAY_PORT),
            "RLQ_RAY_NODE_RESOURCES": json.dumps({"rlq_head": 1}),
            "RLQ_RAY_EXPECT_WORKERS": str(clusters.workers.node_count),
            "RLQ_RAY_EXPECT_HEAD_NODES": str(clusters.head.node_count),
            "PYTHONUNBUFFERED": "1",
            **self._token_env(),
        }
        with sdk_errors("build the head job"):
            return command(
                name=head_name,
                display_name=f"{request.request_id} head",
                experiment_name=request.experiment,
                description=f"rlq {request.algorithm} on {request.env}: Ray head and trainer",
                tags={
                    **self._tags(request, "head"),
                    COMPUTE_TAG: request.compute.model_dump_json(
                        include={"head", "workers", "vnet", "subnet"}, exclude_none=True
                    ),
                },
                code=str(self.stage_source()),
                command=cmd,
                environment=self.environment(),
                environment_variables=env,
                compute=clusters.head.name,
                instance_count=clusters.head.node_count,
                distribution=MpiDistribution(process_count_per_instance=1),
                shm_size=HEAD_SHM_SIZE,
                timeout=job_timeout_s(request, self.settings),
                inputs=inputs or None,
                outputs={CHECKPOINTS_OUTPUT: Output(type="uri_folder", mode="rw_mount")},
            )

    def build_worker_job(
        self, request: TrainingRequest, head_address: str, head_name: str | None = None
    ) -> Any:
        """The worker ``command()`` job: ``instance_count`` nodes that join ``head_address``."""
        from azure.ai.ml import MpiDistribution, command

        clusters = self.clusters(request)
        head_name = head_name or job_names(request.request_id)[0]
        worker_name = worker_job_of(head_name)
        env = {
            "RLQ_RAY_HEAD_ADDRESS": head_address,
            "RLQ_RAY_NODE_RESOURCES": json.dumps({"rlq_worker": 1}),
            "PYTHONUNBUFFERED": "1",
            **self._token_env(),
        }
        with sdk_errors("build the worker job"):
            return command(
                name=worker_name,
                display_name=f"{request.request_id} workers",
                experiment_name=request.experiment,
                description=f"rlq Ray workers for {head_name}",
                tags=self._tags(request, "workers"),
                code=str(self.stage_source()),
                command="python trainer/bootstrap.py --role worker",
                environment=self.environment(),
                environment_variables=env,
                compute=clusters.workers.name,
                instance_count=clusters.workers.node_count,
                distribution=MpiDistribution(process_count_per_instance=1),
                shm_size=worker_shm_size(clusters.workers.vm_size),
                timeout=job_timeout_s(request, self.settings),
            )

    def stage_source(self) -> Path:
        with self._lock:
            if self._stage is None or not self._stage.exists():
                # the catalog's pinned packages join the image; a `path` entry reaches Ray jobs only
                self._stage = stage_trainer(
                    self.trainer_dir, self.settings.environment_catalog.requirements()
                )
            return self._stage

    def checkpoint_uri(self, job_name: str) -> str:
        return f"azureml://jobs/{job_name}/outputs/{CHECKPOINTS_OUTPUT}/paths/final"

    def checkpoints_uri(self, job_name: str) -> str:
        """Every checkpoint job ``job_name`` wrote (its ``checkpoints`` output): a lost job's resume point."""
        return f"azureml://jobs/{job_name}/outputs/{CHECKPOINTS_OUTPUT}"

    # --- internals ------------------------------------------------------------------------

    def _tags(self, request: TrainingRequest, role: str) -> dict[str, str]:
        return {
            **request.tags,
            "rlq_algorithm": request.algorithm,
            "rlq_env": request.env,
            "rlq_experiment": request.experiment,
            ROLE_TAG: role,
            RUN_TAG: request.request_id,
        }

    def _token_env(self) -> dict[str, str]:
        """Where the nodes read the Ray token: vault and secret names, never the token."""
        settings = self.settings
        env = {"RLQ_RAY_TOKEN_SECRET": settings.azureml_ray_token_secret}
        if settings.azureml_key_vault_uri:
            env["RLQ_RAY_TOKEN_VAULT"] = settings.azureml_key_vault_uri
        if settings.azureml_cluster_identity_client_id:
            env["RLQ_IDENTITY_CLIENT_ID"] = settings.azureml_cluster_identity_client_id
        return env

    def _ensure_cluster(
        self,
        name: str,
        vm_size: str,
        min_nodes: int,
        max_nodes: int,
        nodes_needed: int,
        c: Clusters,
        *,
        tier: str = "dedicated",
    ) -> str | None:
        """None when the cluster can take jobs now; what it waits for while it is being created."""
        with sdk_errors(f"look up cluster {name}"):
            try:
                existing = self.ml.compute.get(name)
            except Exception as err:
                if not _is_not_found(err):
                    raise
                existing = None
        if existing is None:
            entity = self.build_compute(
                name=name, vm_size=vm_size, min_nodes=min_nodes, max_nodes=max_nodes, clusters=c, tier=tier
            )
            with sdk_errors(f"create cluster {name}"):
                self.ml.compute.begin_create_or_update(entity)  # the poller is not waited on
            log.info("creating Azure ML cluster %s (%s, %d-%d nodes)", name, vm_size, min_nodes, max_nodes)
            return f"cluster {name} is being created"
        info = compute_info(existing)
        check_existing_cluster(name, info, vm_size=vm_size, nodes_needed=nodes_needed, clusters=c)
        if info.provisioning_state.lower() != "succeeded":
            return f"cluster {name} is {info.provisioning_state or 'being created'}"
        return None

    def _get_job(self, name: str) -> Any | None:
        with sdk_errors(f"look up job {name}"):
            try:
                return self.ml.jobs.get(name)
            except Exception as err:
                if _is_not_found(err):
                    return None
                raise

    def _create(self, job: Any, *, what: str) -> Any:
        """Adopt the job named ``job.name`` when there is one (``jobs.get``); else create it.

        Looked up first, so a job an earlier process created is adopted whatever Azure would answer
        to a second create; a create that still meets a taken name (another process created it
        between the look-up and the create) adopts that job too. Never a second job.
        """
        existing = self._get_job(job.name)
        if existing is not None:
            log.info("job %s exists already; adopting it", job.name)
            return existing
        with sdk_errors(f"submit the {what}"):
            try:
                created = self.ml.jobs.create_or_update(job)
            except Exception as err:
                if not _is_name_taken(err):
                    raise
                log.info("job %s was created meanwhile; adopting it", job.name)
                return self.ml.jobs.get(job.name)
        log.info("submitted %s as Azure ML job %s", what, created.name)
        return created

    def _cancel(self, name: str) -> None:
        with sdk_errors(f"cancel job {name}"):
            try:
                job = self.ml.jobs.get(name)
            except Exception as err:
                if _is_not_found(err):
                    return
                raise
            if str(job.status) in TERMINAL_STATUSES | {"CancelRequested"}:
                return
            self.ml.jobs.begin_cancel(name)
        log.info("Azure ML job %s: cancel requested", name)

    def _worker_name(self, run_id: str, head: Any) -> str | None:
        """The worker job's name when this request has workers (read from the head job itself)."""
        request = self._request_for(head)
        if request is None or self.clusters(request).workers.node_count <= 0:
            return None
        return worker_job_of(run_id)

    def _request_for(self, head: Any) -> TrainingRequest | None:
        tags = dict(getattr(head, "tags", None) or {})
        request_id = tags.get(RUN_TAG)
        if request_id is None:
            return None
        request = self._requests.get(request_id)
        if request is not None:
            return request
        # A fresh process: rebuild what the worker job needs from the head job's own definition.
        argv = json.loads((getattr(head, "environment_variables", None) or {}).get(ARGV_ENV, "[]") or "[]")
        data: dict[str, Any] = {"request_id": request_id, "experiment": tags.get("rlq_experiment", "rlq")}
        for flag, key in (("--run", "algorithm"), ("--env", "env")):
            if flag in argv:
                data[key] = argv[argv.index(flag) + 1]
        if tags.get(COMPUTE_TAG):
            data["compute"] = json.loads(tags[COMPUTE_TAG])
        from shared.contracts.parsing import parse_request

        try:
            request = parse_request(data)
        except Exception:  # noqa: BLE001 - without the request the defaults name the clusters
            return None
        self._remember(request)
        return request

    def _maybe_submit_workers(self, run_id: str, head: Any, worker_name: str, t: _Tracked) -> None:
        """Read the head's run (one call); once its address is there, create the worker job.

        A worker job that exists already (an earlier process created it and died before
        remembering) is found and adopted by :meth:`_create`.
        """
        view = self._read_run(run_id)
        if view is None:
            return
        t.progress = _progress(view) or t.progress
        address = view.tags.get(HEAD_ADDRESS_TAG)
        if not address:
            return  # the head has not published its address yet
        request = self._request_for(head)
        assert request is not None
        self._create(
            self.build_worker_job(request, address, run_id), what=f"worker job of {request.request_id}"
        )
        t.worker_submitted = True

    def _check_workers(self, worker_name: str, t: _Tracked) -> None:
        job = self._get_job(worker_name)
        status = str(getattr(job, "status", "") or "") if job is not None else "missing"
        if status in ("Failed", "Canceled", "missing"):
            t.worker_error = (
                f"the worker job {worker_name} is {status}; training goes on with the head's CPUs"
            )
            log.warning("%s", t.worker_error)

    def _read_run(self, run_id: str) -> RunView | None:
        with sdk_errors(f"metrics of job {run_id}"):
            return self.runs.get_run(run_id)

    def _final(
        self,
        run_id: str,
        head: Any,
        aml_status: str,
        state: JobState,
        portal: str | None,
        worker_name: str | None,
        t: _Tracked,
    ) -> JobStatus:
        if worker_name:
            self._cancel(worker_name)  # the head ended for whatever reason: its workers go too
        view = self._read_run(run_id)
        progress = (_progress(view) if view is not None else None) or t.progress
        summary: dict[str, Any] = {}
        if progress is not None:
            summary.update(
                final_reward=progress.episode_reward_mean,
                iterations=progress.iteration,
                timesteps=progress.timesteps,
            )
        with sdk_errors(f"summary of job {run_id}"):
            trainer = self.runs.summary(run_id) or {}
        for key in (
            "stop_reason",
            "timesteps",
            "duration_s",
            "eval_reward",
            "error",
            "final_reward",
            "best_reward",
            "iterations",
            "algorithm",
            "env",
        ):
            if trainer.get(key) is not None:
                summary[key] = trainer[key]
        if aml_status == "Completed" or trainer.get("checkpoint_path"):
            summary["checkpoint_path"] = self.checkpoint_uri(run_id)
        lost = self._lost(run_id, aml_status, trainer, view, progress, t)
        if lost is not None:
            with self._lock:
                self._tracked.pop(run_id, None)
            return JobStatus(
                state="failed",
                progress=progress,
                error=lost,
                portal_url=portal,
                end=JobEnd.lost,
                checkpoint=Checkpoint(uri=self.checkpoints_uri(run_id)),
            )
        error = None
        if aml_status == "Failed":
            error = (
                summary.get("error") or f"Azure ML job {run_id} failed; see {portal or 'its logs in studio'}"
            )
            summary.setdefault("error", error)
        if aml_status == "Canceled":
            summary.setdefault("stop_reason", "canceled")
        with self._lock:
            self._tracked.pop(run_id, None)
        return JobStatus(
            state=state,
            progress=progress,
            summary=TrainerSummary.read(summary),
            error=error,
            portal_url=portal,
        )

    def _lost(
        self,
        run_id: str,
        aml_status: str,
        trainer: dict[str, Any],
        view: RunView | None,
        progress: Progress | None,
        t: _Tracked,
    ) -> str | None:
        """Why the job was lost with its nodes (``JobEnd.lost``), or None for any other end.

        Azure ML ends a job whose low-priority node was preempted, or whose node stopped
        answering (``NotResponding``), ``Failed`` (docs/azure.md): ``Failed`` after the job ran
        (seen running, or its run has metrics or the head's address) with no summary from the
        trainer — the trainer's own exits (a training failure, bad arguments) always write one
        with ``stop_reason`` or ``error`` and keep their meaning. A job that failed before it ran
        (its image, its code) is no loss of nodes either.
        """
        if aml_status != "Failed" or trainer.get("stop_reason") or trainer.get("error"):
            return None
        ran = t.ran or progress is not None or bool(view is not None and view.tags.get(HEAD_ADDRESS_TAG))
        if not ran:
            return None
        how = "stopped answering (NotResponding) and" if t.not_responding else ""
        return (
            f"Azure ML job {run_id} {how} failed without the trainer's exit: its node was preempted or lost"
        ).replace("  ", " ")

    def _track(self, run_id: str) -> _Tracked:
        with self._lock:
            t = self._tracked.get(run_id)
            if t is None:
                t = self._tracked[run_id] = _Tracked()
            self._tracked.move_to_end(run_id)
            while len(self._tracked) > 4096:
                self._tracked.popitem(last=False)
            return t

    def _remember(self, request: TrainingRequest) -> None:
        with self._lock:
            self._requests[request.request_id] = request
            self._requests.move_to_end(request.request_id)
            while len(self._requests) > 4096:
                self._requests.popitem(last=False)


# --- helpers (pure) ----------------------------------------------------------------------------


def compute_info(compute: Any) -> ComputeInfo:
    """The parts of an ``AmlCompute`` entity (from ``compute.get``) the checks look at."""
    network = getattr(compute, "network_settings", None)
    subnet = getattr(network, "subnet", None) if network is not None else None
    vnet = getattr(network, "vnet_name", None) if network is not None else None
    vnet_rg = None
    if subnet and "/" in subnet:  # a full subnet id
        m = re.search(
            r"/resourceGroups/([^/]+)/.*/virtualNetworks/([^/]+)/subnets/([^/]+)", subnet, re.IGNORECASE
        )
        if m:
            vnet_rg, vnet, subnet = m.group(1), m.group(2), m.group(3)
    errors = getattr(compute, "provisioning_errors", None)
    return ComputeInfo(
        name=str(compute.name),
        compute_type=str(getattr(compute, "type", "") or ""),
        provisioning_state=str(getattr(compute, "provisioning_state", "") or ""),
        vm_size=getattr(compute, "size", None),
        vnet_name=vnet,
        subnet_name=subnet,
        vnet_resource_group=vnet_rg,
        max_nodes=getattr(compute, "max_instances", None),
        errors=readable(str(errors), 300) if errors else None,
    )


def _progress(view: RunView) -> Progress | None:
    """A run's progress from the MLflow metrics the trainer logs (names: :mod:`trainer.contract`)."""
    m: Mapping[str, float] = view.metrics
    if contract.METRIC_REWARD_MEAN not in m and contract.METRIC_TIMESTEPS not in m:
        return None
    reward = m.get(contract.METRIC_REWARD_MEAN)
    episodes = m.get(contract.METRIC_EPISODES_TOTAL)
    return Progress(
        iteration=int(view.step),
        timesteps=int(m.get(contract.METRIC_TIMESTEPS, 0) or 0),
        time_total_s=float(m.get(contract.METRIC_TIME_TOTAL_S, 0.0) or 0.0),
        episode_reward_mean=reward if reward is None or math.isfinite(reward) else None,
        episodes_total=int(episodes) if episodes is not None else None,
    )
