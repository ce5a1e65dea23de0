"""What an Azure ML job of rlq *is*: its name, its clusters, its command, its environment, its tags.

:class:`JobBuilder` builds, and never sends, the ``AmlCompute`` entity of a missing cluster and the
head and worker ``command()`` jobs of a request (:mod:`shared.adapters.compute.azureml.v2` sends
them, polls them and cancels them). The jobs start Ray themselves through ``trainer/bootstrap.py``
and carry the Key Vault and secret *names* the nodes read the Ray token with, never the token.
Nothing here imports an Azure SDK until a job or cluster is built.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.adapters.compute.azureml.clusters import (
    Clusters,
    job_timeout_s,
    resolve_clusters,
    worker_shm_size,
)
from shared.adapters.compute.azureml.environment import (
    CONDA_FILE,
    TRAINER_DIR,
    environment_version,
    stage_trainer,
)
from shared.adapters.compute.azureml.errors import sdk_errors
from shared.contracts.request import TrainingRequest
from shared.contracts.trainer import ARGV_ENV, build_argv, seed_cluster_config
from shared.contracts.vm_sizes import VM_SIZES
from shared.errors import ComputeError
from shared.settings import Settings

RUN_TAG = "rlq_request_id"
ROLE_TAG = "rlq_role"
COMPUTE_TAG = (
    "rlq_compute"  # the request's own compute section, so a fresh process resolves the same clusters
)
RAY_PORT = 6379
HEAD_SHM_SIZE = "24g"
CHECKPOINTS_OUTPUT = "checkpoints"
RESTORE_INPUT = "restore"
CHAMPION_INPUT = "champion"  # the model's champion checkpoint, played against the run's (docs/models.md)
RESUME_INPUT = "resume"  # attempt k > 1: attempt k - 1's checkpoints output
IDLE_BEFORE_SCALE_DOWN_S = 1800
ENVIRONMENT_NAME = "rlq-trainer"


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


def checkpoint_uri(job_name: str) -> str:
    """The final checkpoint job ``job_name`` wrote (its ``checkpoints`` output's ``final``)."""
    return f"azureml://jobs/{job_name}/outputs/{CHECKPOINTS_OUTPUT}/paths/final"


def checkpoints_uri(job_name: str) -> str:
    """Every checkpoint job ``job_name`` wrote (its ``checkpoints`` output): a lost job's resume point."""
    return f"azureml://jobs/{job_name}/outputs/{CHECKPOINTS_OUTPUT}"


class JobBuilder:
    """The clusters and jobs of a request, built for the SDK and never sent (the tests serialise them).

    ``workspace_resource_group`` answers the workspace's resource group, read only when a request's
    VNet names none (:func:`~shared.adapters.compute.azureml.clusters.resolve_clusters`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        workspace_resource_group: Callable[[], str],
        trainer_dir: Path | str | None = None,
    ) -> None:
        self.settings = settings
        self._workspace_resource_group = workspace_resource_group
        self.trainer_dir = Path(trainer_dir) if trainer_dir is not None else TRAINER_DIR
        self._lock = threading.Lock()
        self._stage: Path | None = None

    def clusters(self, request: TrainingRequest) -> Clusters:
        return resolve_clusters(
            self.settings, request, workspace_resource_group=self._workspace_resource_group
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

        Attempt k > 1 mounts attempt k - 1's checkpoints output (:func:`checkpoints_uri`) as the
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
            previous = checkpoints_uri(job_names(request.request_id, attempt - 1)[0])
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

    def close(self) -> None:
        """Remove the staged code snapshot (:meth:`stage_source` stages it again when asked)."""
        import shutil

        with self._lock:
            if self._stage is not None:
                shutil.rmtree(self._stage, ignore_errors=True)
                self._stage = None

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
