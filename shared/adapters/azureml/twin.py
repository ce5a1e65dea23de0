"""An in-memory Azure ML workspace for :class:`shared.adapters.azureml.v1.AzureMLRayBackend`.

It implements the backend's :class:`~shared.adapters.azureml.gateway.AmlGateway` with the behaviour the
service relies on: compute targets that are created asynchronously (``Creating`` → ``Succeeded``),
runs found by tag, a status progression driven by :meth:`AzureMLTwin.step`, metric history on the
head child run (scalar for one value, a list after that, as Azure ML answers), output files,
cancel (``CancelRequested`` → ``Canceled``), failures with ``get_details()["error"]``, and SDK
errors raised as the real SDK's exception classes. It also answers the two network calls the NSG
check makes. Everything it was handed (the real estimator, the real provisioning configuration)
is kept for inspection.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.adapters.azureml.clusters import ComputeInfo

PROGRESSION = ("NotStarted", "Queued", "Preparing", "Starting", "Running", "Finalizing", "Completed")
TERMINAL = frozenset({"Completed", "Failed", "Canceled"})


class TwinRun:
    """One run (parent or child) with the slice of ``azureml.core.Run`` the backend uses."""

    def __init__(self, twin: AzureMLTwin, run_id: str, experiment: str, tags: Mapping[str, str]) -> None:
        self._twin = twin
        self.id = run_id
        self.experiment = experiment
        self.tags = dict(tags)
        self.status = "NotStarted"
        self.metrics: dict[str, list[Any]] = {}
        self.files: dict[str, bytes] = {}
        self.children: list[TwinRun] = []
        self.error: dict[str, Any] | None = None
        self.start_time: str | None = None
        self.end_time: str | None = None
        self.estimator: Any = None
        self.cancel_calls = 0

    def get_status(self) -> str:
        self._twin._call("get_status", self.id)
        return self.status

    def get_metrics(self, name: str | None = None, recursive: bool = False) -> dict[str, Any]:
        self._twin._call("get_metrics", self.id)

        def flat(run: TwinRun) -> dict[str, Any]:
            return {
                k: (v[0] if len(v) == 1 else list(v))
                for k, v in run.metrics.items()
                if name is None or k == name
            }

        if not recursive:
            return flat(self)
        out = {self.id: flat(self)}
        for child in self.children:
            out[child.id] = flat(child)
        return out

    def get_details(self) -> dict[str, Any]:
        self._twin._call("get_details", self.id)
        details: dict[str, Any] = {"runId": self.id, "status": self.status, "target": "head-gpu"}
        if self.start_time:
            details["startTimeUtc"] = self.start_time
        if self.end_time:
            details["endTimeUtc"] = self.end_time
        if self.error is not None:
            details["error"] = self.error
        return details

    def get_portal_url(self) -> str:
        sub, rg, ws = self._twin.workspace_ids()
        return (
            f"https://ml.azure.com/runs/{self.id}?wsid=/subscriptions/{sub}/resourcegroups/{rg}/"
            f"workspaces/{ws}"
        )

    def get_children(self) -> list[TwinRun]:
        return list(self.children)

    def get_file_names(self) -> list[str]:
        return sorted(self.files)

    def download_file(self, name: str, output_file_path: str | None = None) -> None:
        if name not in self.files:
            from azureml.exceptions import UserErrorException

            raise UserErrorException(f"File with path {name} was not found")
        Path(output_file_path or Path(name).name).write_bytes(self.files[name])

    def cancel(self) -> None:
        self._twin._call("cancel", self.id)
        self.cancel_calls += 1
        if self.status not in TERMINAL:
            self.status = "CancelRequested"


@dataclass
class _Subnet:
    network_security_group: Any
    address_prefix: str = "10.20.1.0/24"
    address_prefixes: list[str] = field(default_factory=list)


@dataclass
class _Nsg:
    security_rules: list[dict[str, Any]]
    default_security_rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Ref:
    id: str


# What infra/modules/network.bicep puts on the aml subnet by default (clusters without public IPs,
# region westeurope); tests/azure/test_deployment_files.py compares the two.
_AML_SUBNET = "10.20.1.0/24"


def _rule(
    name: str, priority: int, direction: str, access: str, protocol: str, src: str, dst: str, port: str
):
    return {
        "name": name,
        "priority": priority,
        "direction": direction,
        "access": access,
        "protocol": protocol,
        "source_address_prefix": src,
        "destination_address_prefix": dst,
        "destination_port_range": port,
    }


_OUTBOUND_443 = [
    "AzureMachineLearning",
    "BatchNodeManagement.westeurope",
    "Storage.westeurope",
    "AzureActiveDirectory",
    "AzureResourceManager",
    "MicrosoftContainerRegistry.westeurope",
    "AzureFrontDoor.FirstParty",
    "AzureContainerRegistry.westeurope",
    "AzureKeyVault.westeurope",
    "AzureMonitor",
]

INFRA_NSG_RULES = [
    _rule("AllowRayWithinSubnet", 120, "Inbound", "Allow", "*", _AML_SUBNET, _AML_SUBNET, "*"),
    _rule("DenyInternetInbound", 4000, "Inbound", "Deny", "*", "Internet", "*", "*"),
    _rule(
        "AllowAzureMachineLearningUdp",
        199,
        "Outbound",
        "Allow",
        "Udp",
        _AML_SUBNET,
        "AzureMachineLearning",
        "5831",
    ),
    _rule("DenyInternetOutbound", 4000, "Outbound", "Deny", "*", "*", "Internet", "*"),
    *(
        _rule(
            "AllowAzureFrontDoorFirstParty"
            if tag == "AzureFrontDoor.FirstParty"
            else f"Allow{tag.split('.')[0]}",
            200 + i,
            "Outbound",
            "Allow",
            "Tcp",
            _AML_SUBNET,
            tag,
            "443",
        )
        for i, tag in enumerate(_OUTBOUND_443)
    ),
]


class AzureMLTwin:
    """An Azure ML workspace in memory (an :class:`AmlGateway`). Thread-safe."""

    def __init__(
        self,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "rlq-rg",
        workspace: str = "rlq-ws",
        nsg_rules: list[dict[str, Any]] | None = None,
    ) -> None:
        self.ids = (subscription_id, resource_group, workspace)
        self.computes: dict[str, ComputeInfo] = {}
        self.provisioning_configs: dict[str, Any] = {}
        self.runs: dict[str, TwinRun] = {}
        self.nsg_rules = list(INFRA_NSG_RULES if nsg_rules is None else nsg_rules)
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[str, list[BaseException]] = {}
        self._counter = 0
        self._lock = threading.RLock()

    # --- AmlGateway ---------------------------------------------------------------------------

    def get_compute(self, name: str) -> ComputeInfo | None:
        self._call("get_compute", name)
        return self.computes.get(name)

    def create_compute(self, name: str, provisioning_configuration: Any) -> None:
        self._call("create_compute", name)
        cfg = provisioning_configuration
        with self._lock:
            self.provisioning_configs[name] = cfg
            self.computes[name] = ComputeInfo(
                name=name,
                compute_type="AmlCompute",
                provisioning_state="Creating",
                vm_size=cfg.vm_size,
                vnet_name=cfg.vnet_name,
                subnet_name=cfg.subnet_name,
                vnet_resource_group=cfg.vnet_resourcegroup_name,
                max_nodes=cfg.scale_settings.maximum_node_count,
            )

    def find_runs(self, experiment: str, tags: Mapping[str, str]) -> list[TwinRun]:
        self._call("find_runs", experiment)
        with self._lock:
            found = [
                r
                for r in self.runs.values()
                if r.experiment == experiment and all(r.tags.get(k) == v for k, v in tags.items())
            ]
        return list(reversed(found))  # newest first, as Azure ML lists them

    def submit(self, experiment: str, estimator: Any, tags: Mapping[str, str]) -> TwinRun:
        self._call("submit", experiment)
        head = estimator.head_configuration.target
        workers = estimator.worker_configuration.target if estimator.worker_configuration else None
        for target in filter(None, (head, workers)):
            if target not in self.computes:
                from azureml.exceptions import UserErrorException

                raise UserErrorException(f"Compute target {target} does not exist in the workspace")
        with self._lock:
            self._counter += 1
            run_id = f"{experiment}_{self._counter:04d}_rl"
            run = TwinRun(self, run_id, experiment, tags)
            run.estimator = estimator
            run.children = [
                TwinRun(self, f"{run_id}_head", experiment, {}),
                TwinRun(self, f"{run_id}_worker", experiment, {}),
            ]
            self.runs[run_id] = run
        return run

    def get_run(self, run_id: str) -> TwinRun:
        self._call("get_run", run_id)
        with self._lock:
            run = self.runs.get(run_id)
        if run is None:
            from azureml.exceptions import UserErrorException

            raise UserErrorException(f"Run {run_id} was not found (Response Code: 404)")
        return run

    def workspace_ids(self) -> tuple[str, str, str]:
        return self.ids

    # --- the network calls of the NSG check -----------------------------------------------

    def network(self) -> Any:
        twin = self

        class Subnets:
            def get(self, resource_group: str, vnet: str, subnet: str) -> _Subnet:
                twin._call("subnets.get", f"{resource_group}/{vnet}/{subnet}")
                nsg_id = (
                    f"/subscriptions/{twin.ids[0]}/resourceGroups/{resource_group}/providers/"
                    f"Microsoft.Network/networkSecurityGroups/{vnet}-{subnet}-nsg"
                )
                return _Subnet(network_security_group=_Ref(nsg_id))

        class Nsgs:
            def get(self, resource_group: str, name: str) -> _Nsg:
                twin._call("network_security_groups.get", name)
                return _Nsg(security_rules=list(twin.nsg_rules))

        class Network:
            subnets = Subnets()
            network_security_groups = Nsgs()

        return Network()

    # --- driving the twin -----------------------------------------------------------------

    def fail_next(self, method: str, error: BaseException) -> None:
        """Make the next call of ``method`` raise ``error`` (an SDK exception)."""
        self.failures.setdefault(method, []).append(error)

    def provision(self, name: str, state: str = "Succeeded") -> None:
        with self._lock:
            info = self.computes[name]
            self.computes[name] = ComputeInfo(**{**info.__dict__, "provisioning_state": state})

    def add_compute(self, info: ComputeInfo) -> None:
        with self._lock:
            self.computes[info.name] = info

    def step(self, run_id: str) -> str:
        """Move a run one status along its life (and its children with it)."""
        with self._lock:
            run = self.runs[run_id]
            if run.status == "CancelRequested":
                new = "Canceled"
            elif run.status in TERMINAL:
                return run.status
            else:
                new = PROGRESSION[PROGRESSION.index(run.status) + 1]
            self._set_status(run, new)
            return new

    def run_to(self, run_id: str, status: str) -> None:
        while self.runs[run_id].status != status:
            before = self.runs[run_id].status
            if self.step(run_id) == before:
                raise AssertionError(f"run {run_id} cannot reach {status} from {before}")

    def log_iteration(self, run_id: str, *, reward: float, episodes: int) -> None:
        """What the trainer's Azure ML sink logs each iteration, on the head child."""
        with self._lock:
            head = self.runs[run_id].children[0]
            head.metrics.setdefault("episode_reward_mean", []).append(reward)
            head.metrics.setdefault("episodes_total", []).append(episodes)

    def write_outputs(self, run_id: str, files: Mapping[str, bytes | str | dict[str, Any]]) -> None:
        with self._lock:
            head = self.runs[run_id].children[0]
            for name, content in files.items():
                if isinstance(content, dict):
                    content = json.dumps(content)
                head.files[name] = content.encode() if isinstance(content, str) else content

    def fail(self, run_id: str, *, code: str, message: str) -> None:
        with self._lock:
            run = self.runs[run_id]
            run.error = {"error": {"code": code, "message": message}}
            self._set_status(run, "Failed")

    def runs_for(self, request_id: str) -> list[TwinRun]:
        return [r for r in self.runs.values() if r.tags.get("rlq_request_id") == request_id]

    # --- internals ------------------------------------------------------------------------

    def _set_status(self, run: TwinRun, status: str) -> None:
        run.status = status
        if status in ("Running", *TERMINAL) and run.start_time is None:
            run.start_time = "2026-01-01T00:00:00Z"
        if status in TERMINAL:
            run.end_time = "2026-01-01T01:00:00Z"
        for child in run.children:
            child.status = status

    def _call(self, method: str, target: str) -> None:
        with self._lock:
            self.calls.append((method, target))
            pending = self.failures.get(method)
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error
