"""Which clusters a request needs, and why an existing cluster cannot serve it.

* :func:`resolve_clusters` — the head (GPU) and worker (CPU) clusters of a request, from the request
  or the deployment's defaults, and the VNet they live in.
* :func:`cluster_problems` — what is wrong with an existing compute target: another VM size, too
  few nodes, failed provisioning, another VNet. Reported, never resized; :func:`check_existing_cluster`
  raises it (or a transient error while the cluster is being deleted).
* :func:`job_timeout_s` — how long Azure ML lets a job run.
* :func:`worker_shm_size` — the shared memory a worker node's Ray object store is given.
* :class:`NsgGuard` — the subnet's NSG read through ARM (cached) and checked with :mod:`.nsg`.
* :func:`workspace_coordinates` — the workspace the clusters live in, from the settings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared.adapters.compute.azureml.errors import readable
from shared.adapters.compute.azureml.nsg import missing_nsg_rules, nsg_name_and_group
from shared.contracts.request import Compute, HeadCluster, TrainingRequest, WorkerCluster
from shared.contracts.vm_sizes import VM_SIZES
from shared.errors import ComputeError, PermanentError, TransientError
from shared.settings import Settings

log = logging.getLogger(__name__)


def workspace_coordinates(settings: Settings) -> tuple[str, str, str]:
    """(subscription, resource group, workspace) of the Azure ML workspace; all three are required."""
    sub, rg, ws = (
        settings.azureml_subscription_id,
        settings.azureml_resource_group,
        settings.azureml_workspace,
    )
    if not (sub and rg and ws):
        raise PermanentError(
            "RLQ_BACKEND=azureml needs RLQ_AZUREML_SUBSCRIPTION_ID, RLQ_AZUREML_RESOURCE_GROUP "
            "and RLQ_AZUREML_WORKSPACE",
            reason="AzureMLConfiguration",
        )
    return sub, rg, ws


@dataclass(frozen=True)
class ComputeInfo:
    """The parts of an existing compute target the backends check."""

    name: str
    compute_type: str
    provisioning_state: str
    vm_size: str | None = None
    vnet_name: str | None = None
    subnet_name: str | None = None
    vnet_resource_group: str | None = None
    max_nodes: int | None = None
    errors: str | None = None


@dataclass(frozen=True)
class Clusters:
    head: HeadCluster
    workers: WorkerCluster
    vnet: str | None
    subnet: str
    vnet_resource_group: str | None

    @property
    def head_gpus(self) -> int:
        return VM_SIZES[self.head.vm_size].gpus

    @property
    def total_cpus(self) -> int:
        return int(Compute(head=self.head, workers=self.workers).total_cpus() or 0)


def resolve_clusters(
    settings: Settings, request: TrainingRequest, *, workspace_resource_group: Callable[[], str]
) -> Clusters:
    """The request's clusters, or the deployment's defaults (``RLQ_HEAD_*`` / ``RLQ_WORKER_*``)."""
    try:
        head = request.compute.head or HeadCluster(
            name=settings.head_cluster,
            vm_size=settings.head_vm_size,
            min_nodes=settings.head_min_nodes,
            max_nodes=settings.head_max_nodes,
        )
        workers = request.compute.workers or WorkerCluster(
            name=settings.worker_cluster,
            vm_size=settings.worker_vm_size,
            node_count=settings.worker_node_count,
            min_nodes=settings.worker_min_nodes,
            max_nodes=settings.worker_max_nodes,
        )
    except ValidationError as err:
        raise ComputeError(
            f"the deployment's default clusters are invalid (RLQ_HEAD_* / RLQ_WORKER_*): "
            f"{err.errors(include_url=False)[0]['msg']}"
        ) from None
    vnet = request.compute.vnet or settings.azureml_vnet
    vnet_rg = settings.azureml_vnet_resource_group or settings.azureml_resource_group
    if vnet and not vnet_rg:  # the VNet lives in the workspace's resource group unless told otherwise
        vnet_rg = workspace_resource_group()
    return Clusters(
        head=head,
        workers=workers,
        vnet=vnet,
        subnet=request.compute.subnet or settings.azureml_subnet,
        vnet_resource_group=vnet_rg,
    )


def cluster_problems(
    info: ComputeInfo,
    *,
    vm_size: str,
    nodes_needed: int,
    vnet: str | None,
    subnet: str,
    vnet_resource_group: str | None,
) -> list[str]:
    """Why an existing compute target cannot serve the job; empty when it can."""
    problems = []
    if info.compute_type and info.compute_type.lower() not in ("amlcompute",):
        problems.append(f"it is a {info.compute_type}, not an AmlCompute cluster")
    if info.provisioning_state.lower() in ("failed", "canceled"):
        problems.append(
            f"its provisioning state is {info.provisioning_state}"
            + (f" ({readable(info.errors, 300)})" if info.errors else "")
            + "; delete it in Azure ML studio so rlq can recreate it"
        )
    if info.vm_size and info.vm_size.upper() != vm_size.upper():
        problems.append(
            f"its VM size is {info.vm_size.upper()}, the request asks for {vm_size.upper()} "
            "(name another cluster to use another size)"
        )
    if info.max_nodes is not None and info.max_nodes < nodes_needed:
        problems.append(f"it scales to {info.max_nodes} nodes, the job needs {nodes_needed}")
    if vnet:
        where = f"{info.vnet_name}/{info.subnet_name}" if info.vnet_name else "no virtual network"
        if (info.vnet_name or "").lower() != vnet.lower() or (
            info.subnet_name or ""
        ).lower() != subnet.lower():
            problems.append(f"it is in {where}, not {vnet}/{subnet}")
        elif (
            vnet_resource_group
            and info.vnet_resource_group
            and info.vnet_resource_group.lower() != vnet_resource_group.lower()
        ):
            problems.append(
                f"its VNet is in resource group {info.vnet_resource_group}, not {vnet_resource_group}"
            )
    return problems


def job_timeout_s(request: TrainingRequest, settings: Settings) -> int:
    """How long Azure ML lets the request's jobs run: its ``compute.max_run_duration_s``, else the
    deployment's default."""
    return int(request.compute.max_run_duration_s or settings.default_run_duration_s)


def worker_shm_size(vm_size: str) -> str:
    """About 40% of a worker's memory: Ray puts its object store (30% by default) in /dev/shm."""
    size = VM_SIZES.get(vm_size.upper())
    return f"{max(2, math.ceil((size.memory_gib if size else 8) * 0.4))}g"


def check_existing_cluster(
    name: str, info: ComputeInfo, *, vm_size: str, nodes_needed: int, clusters: Clusters
) -> None:
    """Raise when the existing cluster ``name`` cannot take the job (see :func:`cluster_problems`)."""
    if info.provisioning_state.lower() == "deleting":
        raise TransientError(f"cluster {name} is being deleted; it will be recreated on a later try")
    problems = cluster_problems(
        info,
        vm_size=vm_size,
        nodes_needed=nodes_needed,
        vnet=clusters.vnet,
        subnet=clusters.subnet,
        vnet_resource_group=clusters.vnet_resource_group,
    )
    if problems:
        raise ComputeError(f"cluster {name} cannot take this job: " + "; ".join(problems))


@dataclass
class _NsgCache:
    at: float
    problems: list[str] = field(default_factory=list)


class NsgGuard:
    """Checks the subnet's NSG for what Azure ML and Ray need (``RLQ_AZUREML_NSG_CHECK``), cached.

    The flows follow ``RLQ_AZUREML_NODE_PUBLIC_IP`` and ``RLQ_AZUREML_NSG_BATCH_INBOUND``
    (:func:`~shared.adapters.compute.azureml.nsg.required_flows`).

    ``network_factory`` returns an ``azure-mgmt-network`` client (or the twin's); a read that fails
    for any reason but a missing subnet skips the advisory check.
    """

    def __init__(
        self,
        settings: Settings,
        network_factory: Callable[[], Any],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        cache_s: float = 900.0,
    ) -> None:
        self.settings = settings
        self._network_factory = network_factory
        self._network: Any = None
        self._monotonic = monotonic
        self._cache_s = cache_s
        self._cache: dict[tuple[str, str, str], _NsgCache] = {}

    def check(self, c: Clusters) -> None:
        mode = self.settings.azureml_nsg_check
        if mode == "off" or not c.vnet or not c.vnet_resource_group:
            return
        key = (c.vnet_resource_group, c.vnet, c.subnet)
        now = self._monotonic()
        cached = self._cache.get(key)
        if cached is None or now - cached.at > self._cache_s:
            problems = self._read(*key)
            if problems is None:  # could not read: do not block on an advisory check
                return
            cached = self._cache[key] = _NsgCache(at=now, problems=problems)
        if not cached.problems:
            return
        text = f"the NSG on subnet {c.vnet}/{c.subnet} blocks what Azure ML needs: " + "; ".join(
            cached.problems
        )
        if mode == "enforce":
            self._cache.pop(key, None)  # re-read next time: someone may be fixing it right now
            raise ComputeError(text + " (RLQ_AZUREML_NSG_CHECK=warn to only log this)")
        log.warning("%s", text)

    def _read(self, resource_group: str, vnet: str, subnet: str) -> list[str] | None:
        try:
            if self._network is None:
                self._network = self._network_factory()
            net = self._network
            sn = net.subnets.get(resource_group, vnet, subnet)
            ref = getattr(sn, "network_security_group", None)
            if ref is None:
                return []  # no NSG on the subnet: nothing filters inbound traffic
            nsg_rg, nsg_name = nsg_name_and_group(ref.id)
            nsg = net.network_security_groups.get(nsg_rg, nsg_name)
            rules = list(getattr(nsg, "security_rules", None) or []) + list(
                getattr(nsg, "default_security_rules", None) or []
            )
            prefixes = [
                getattr(sn, "address_prefix", None),
                *list(getattr(sn, "address_prefixes", None) or []),
            ]
            return missing_nsg_rules(
                rules,
                subnet_prefixes=[p for p in prefixes if p],
                node_public_ip=self.settings.azureml_node_public_ip,
                batch_node_inbound=self.settings.azureml_nsg_batch_inbound,
            )
        except Exception as err:  # any failure but a missing subnet only skips an advisory check
            if type(err).__name__ == "ResourceNotFoundError":
                raise ComputeError(
                    f"subnet {vnet}/{subnet} was not found in resource group {resource_group}: "
                    "check RLQ_AZUREML_VNET / RLQ_AZUREML_SUBNET / RLQ_AZUREML_VNET_RESOURCE_GROUP"
                ) from err
            log.warning(
                "could not read the NSG of %s/%s (%s: %s); skipping the check",
                vnet,
                subnet,
                type(err).__name__,
                readable(str(err), 300),
            )
            return None


def network_client_from_settings(settings: Settings) -> Any:
    """The ARM network client the NSG check reads with (the Function's managed identity)."""
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.network import NetworkManagementClient

    subscription, _, _ = workspace_coordinates(settings)
    return NetworkManagementClient(DefaultAzureCredential(), subscription)
