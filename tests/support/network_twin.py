"""The ARM network reads of the NSG check (:class:`shared.adapters.compute.azureml.clusters.NsgGuard`), twinned.

``NetworkTwin.client()`` answers what ``azure-mgmt-network``'s ``NetworkManagementClient`` answers
for the two calls the guard makes — ``subnets.get(resource_group, vnet, subnet)`` (the subnet and
its NSG's id) and ``network_security_groups.get(resource_group, name)`` (its security rules) — and
records each call. Its default rules are the ones ``infra/modules/network.bicep`` puts on the
``aml`` subnet (clusters without public IPs, region westeurope);
``tests/azure/test_deployment_files.py`` compares the two.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

AML_SUBNET = "10.20.1.0/24"


@dataclass
class _Subnet:
    network_security_group: Any
    address_prefix: str = AML_SUBNET
    address_prefixes: list[str] = field(default_factory=list)


@dataclass
class _Nsg:
    security_rules: list[dict[str, Any]]
    default_security_rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Ref:
    id: str


def _rule(
    name: str, priority: int, direction: str, access: str, protocol: str, src: str, dst: str, port: str
) -> dict[str, Any]:
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
    _rule("AllowRayWithinSubnet", 120, "Inbound", "Allow", "*", AML_SUBNET, AML_SUBNET, "*"),
    _rule("DenyInternetInbound", 4000, "Inbound", "Deny", "*", "Internet", "*", "*"),
    {
        **_rule(
            "AllowAzureMachineLearning",
            197,
            "Outbound",
            "Allow",
            "Tcp",
            AML_SUBNET,
            "AzureMachineLearning",
            "",
        ),
        "destination_port_range": None,
        "destination_port_ranges": ["443", "8787", "18881"],
    },
    _rule(
        "AllowBatchNodeManagement",
        198,
        "Outbound",
        "Allow",
        "*",
        AML_SUBNET,
        "BatchNodeManagement.westeurope",
        "443",
    ),
    _rule(
        "AllowAzureMachineLearningUdp",
        199,
        "Outbound",
        "Allow",
        "Udp",
        AML_SUBNET,
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
            AML_SUBNET,
            tag,
            "443",
        )
        for i, tag in enumerate(_OUTBOUND_443)
    ),
]


class NetworkTwin:
    """A virtual network whose subnets all carry one NSG with ``nsg_rules``. Thread-safe."""

    def __init__(
        self,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        nsg_rules: list[dict[str, Any]] | None = None,
    ) -> None:
        self.subscription_id = subscription_id
        self.nsg_rules = list(INFRA_NSG_RULES if nsg_rules is None else nsg_rules)
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _call(self, method: str, target: str) -> None:
        with self._lock:
            self.calls.append((method, target))

    def client(self) -> Any:
        """What ``network_factory`` returns: the ``subnets`` and ``network_security_groups`` operations."""
        twin = self

        class Subnets:
            def get(self, resource_group: str, vnet: str, subnet: str) -> _Subnet:
                twin._call("subnets.get", f"{resource_group}/{vnet}/{subnet}")
                nsg_id = (
                    f"/subscriptions/{twin.subscription_id}/resourceGroups/{resource_group}/providers/"
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
