"""Does a subnet's network security group let Azure ML and Ray work on the cluster nodes? (pure)

Knows ARM's rule model (dicts in ARM JSON, camelCase or snake_case, or SDK ``SecurityRule``
objects) and Azure's NSG semantics; nothing of any Azure ML SDK.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Flow:
    """One flow the cluster nodes need: inbound from ``peer`` or outbound to ``peer``."""

    what: str
    direction: str  # "Inbound" or "Outbound"
    peer: str  # a service tag, or "VirtualNetwork" for traffic inside the VNet
    ports: tuple[int, ...]
    port_text: str
    protocol: str = "Tcp"  # "Tcp", "Udp", or "*": any protocol (checked as TCP and as UDP)
    regional: bool = False  # the guidance names the regional tag (``Storage.<region>``)


# GCS, dashboard, client server, first and last default worker ports
_RAY_PORTS = (6379, 8265, 10001, 10002, 19999)
_RAY_PORT_TEXT = "6379, 8265, 10001, 10002-19999"

# Outbound service tags of Azure ML's current VNet guidance for compute clusters:
# how-to-secure-training-vnet ("Compute instance/cluster or serverless with no public IP", the same
# list for clusters with a public IP) and how-to-access-azureml-behind-firewall ("Outbound traffic",
# "Recommended configuration for training and deploying models"). Tag -> (purpose, regional).
# TCP 443 unless OUTBOUND_PORTS says otherwise.
OUTBOUND_TAGS: dict[str, tuple[str, bool]] = {
    "AzureMachineLearning": ("Azure ML service", False),
    "BatchNodeManagement": ("Azure Batch, which runs the cluster nodes", True),
    "Storage": ("Azure Storage of the Batch pool and the workspace", True),
    "AzureActiveDirectory": ("Microsoft Entra ID tokens", False),
    "AzureResourceManager": ("Azure Resource Manager", False),
    "MicrosoftContainerRegistry": ("the Microsoft base image", True),
    "AzureFrontDoor.FirstParty": ("the Microsoft base image's layers", False),
    "AzureContainerRegistry": ("the workspace registry's environment image (public endpoint)", True),
    "AzureKeyVault": ("the workspace Key Vault (the Ray token)", True),
    "AzureMonitor": ("Azure Monitor logs and metrics", False),
}

# The tags how-to-secure-training-vnet lists with more than TCP 443: AzureMachineLearning on TCP
# 443/8787/18881 (and UDP 5831, below), BatchNodeManagement.<region> on ANY protocol, port 443.
# Tag -> (ports, as the guidance writes them, protocol).
OUTBOUND_PORTS: dict[str, tuple[tuple[int, ...], str, str]] = {
    "AzureMachineLearning": ((443, 8787, 18881), "443, 8787, 18881", "Tcp"),
    "BatchNodeManagement": ((443,), "443", "*"),
}

RAY_INBOUND = Flow("Ray between head and workers", "Inbound", "VirtualNetwork", _RAY_PORTS, _RAY_PORT_TEXT)
RAY_OUTBOUND = Flow("Ray between head and workers", "Outbound", "VirtualNetwork", _RAY_PORTS, _RAY_PORT_TEXT)
AML_INBOUND = Flow(
    "Azure ML service, clusters with a public IP", "Inbound", "AzureMachineLearning", (44224,), "44224"
)
BATCH_INBOUND = Flow(
    "the seed's Azure ML node management rule, RLQ_AZUREML_NSG_BATCH_INBOUND",
    "Inbound",
    "BatchNodeManagement",
    (29876, 29877),
    "29876-29877",
)
OUTBOUND = (
    *(
        Flow(what, "Outbound", tag, *OUTBOUND_PORTS.get(tag, ((443,), "443", "Tcp")), regional=regional)
        for tag, (what, regional) in OUTBOUND_TAGS.items()
    ),
    Flow(
        "Azure ML service (node management)",
        "Outbound",
        "AzureMachineLearning",
        (5831,),
        "5831",
        protocol="Udp",
    ),
    RAY_OUTBOUND,
)


def required_flows(*, node_public_ip: bool = False, batch_node_inbound: bool = False) -> tuple[Flow, ...]:
    """The flows the NSG must allow. Clusters without a public IP (``enableNodePublicIp: false``) need
    no inbound rule but Ray's inside the VNet; with a public IP, Azure ML reaches the nodes on TCP
    44224. ``batch_node_inbound`` adds the seed's rule (TCP 29876-29877 from ``BatchNodeManagement``,
    the older guidance) for deployments that still rely on it."""
    inbound = [*([AML_INBOUND] if node_public_ip else []), *([BATCH_INBOUND] if batch_node_inbound else [])]
    return (*inbound, RAY_INBOUND, *OUTBOUND)


# Azure adds these to every NSG; a rule list without them is completed with them.
# https://learn.microsoft.com/azure/virtual-network/network-security-groups-overview#default-security-rules
DEFAULT_RULES = (
    {
        "name": "AllowVnetInBound",
        "priority": 65000,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "*",
        "source_address_prefix": "VirtualNetwork",
        "destination_address_prefix": "VirtualNetwork",
        "destination_port_range": "*",
    },
    {
        "name": "AllowAzureLoadBalancerInBound",
        "priority": 65001,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "*",
        "source_address_prefix": "AzureLoadBalancer",
        "destination_address_prefix": "*",
        "destination_port_range": "*",
    },
    {
        "name": "DenyAllInBound",
        "priority": 65500,
        "direction": "Inbound",
        "access": "Deny",
        "protocol": "*",
        "source_address_prefix": "*",
        "destination_address_prefix": "*",
        "destination_port_range": "*",
    },
    {
        "name": "AllowVnetOutBound",
        "priority": 65000,
        "direction": "Outbound",
        "access": "Allow",
        "protocol": "*",
        "source_address_prefix": "VirtualNetwork",
        "destination_address_prefix": "VirtualNetwork",
        "destination_port_range": "*",
    },
    {
        "name": "AllowInternetOutBound",
        "priority": 65001,
        "direction": "Outbound",
        "access": "Allow",
        "protocol": "*",
        "source_address_prefix": "*",
        "destination_address_prefix": "Internet",
        "destination_port_range": "*",
    },
    {
        "name": "DenyAllOutBound",
        "priority": 65500,
        "direction": "Outbound",
        "access": "Deny",
        "protocol": "*",
        "source_address_prefix": "*",
        "destination_address_prefix": "*",
        "destination_port_range": "*",
    },
)


_DEFAULT_PRIORITY = 65000  # the default rules' priorities start here; custom rules end at 4096


@dataclass(frozen=True)
class _Rule:
    name: str
    priority: int
    direction: str
    access: str
    protocol: str
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    ports: tuple[str, ...]

    def peers(self, flow: Flow) -> tuple[str, ...]:
        """The prefixes on the far side of ``flow`` (the source inbound, the destination outbound)."""
        return self.sources if flow.direction == "Inbound" else self.destinations

    def locals(self, flow: Flow) -> tuple[str, ...]:
        return self.destinations if flow.direction == "Inbound" else self.sources


def _field(rule: Any, snake: str) -> Any:
    camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), snake)
    if isinstance(rule, Mapping):
        if snake in rule:
            return rule[snake]
        if camel in rule:
            return rule[camel]
        props = rule.get("properties")
        if isinstance(props, Mapping):
            return props.get(camel, props.get(snake))
        return None
    return getattr(rule, snake, None)


def _prefixes(rule: Any, single: str) -> tuple[str, ...]:
    values = [_field(rule, single), *list(_field(rule, single + "es") or [])]
    return tuple(str(v) for v in values if v) or ("*",)  # no prefix given: any


def _normalize(rule: Any) -> _Rule:
    ports = [_field(rule, "destination_port_range"), *list(_field(rule, "destination_port_ranges") or [])]
    return _Rule(
        name=str(_field(rule, "name") or "?"),
        priority=int(_field(rule, "priority") or 0),
        direction=str(_field(rule, "direction") or ""),
        access=str(_field(rule, "access") or ""),
        protocol=str(_field(rule, "protocol") or "*"),
        sources=_prefixes(rule, "source_address_prefix"),
        destinations=_prefixes(rule, "destination_address_prefix"),
        ports=tuple(str(p) for p in ports if p),
    )


def _port_matches(spec: str, port: int) -> bool:
    spec = spec.strip()
    if spec in ("*", "Any"):
        return True
    if "-" in spec:
        lo, hi = spec.split("-", 1)
        return int(lo) <= port <= int(hi)
    return spec.isdigit() and int(spec) == port


def _overlaps_subnet(prefix: str, subnet_prefixes: tuple[str, ...]) -> bool | None:
    """Whether a CIDR overlaps the subnet; None when ``prefix`` is not a CIDR."""
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return None
    return any(net.overlaps(ipaddress.ip_network(s, strict=False)) for s in subnet_prefixes if s)


def _peer_matches(prefix: str, peer: str, subnet_prefixes: tuple[str, ...]) -> bool:
    p = prefix.strip()
    if p in ("*", "Any", "0.0.0.0/0"):
        return True
    if peer == "VirtualNetwork":
        return p == "VirtualNetwork" or bool(_overlaps_subnet(p, subnet_prefixes))
    # an Azure service's public addresses: its tag (optionally regional) or the Internet tag; rules
    # naming specific public CIDRs are not assumed to cover a service tag
    return p.lower() == peer.lower() or p.lower().startswith(peer.lower() + ".") or p == "Internet"


def _local_matches(prefix: str, subnet_prefixes: tuple[str, ...]) -> bool:
    """Does a rule's own side (destination inbound, source outbound) cover the cluster's subnet?"""
    p = prefix.strip()
    if p in ("*", "Any", "0.0.0.0/0", "VirtualNetwork"):
        return True
    overlaps = _overlaps_subnet(p, subnet_prefixes)
    if overlaps is None:
        return False  # a service tag or Internet: not the subnet's own addresses
    return overlaps or not subnet_prefixes  # subnet unknown: a CIDR is taken to cover it


def _first_match(rules: list[_Rule], flow: Flow, port: int, subnet_prefixes: tuple[str, ...]) -> _Rule | None:
    for rule in rules:
        if rule.direction.lower() != flow.direction.lower():
            continue
        if rule.protocol.lower() not in ("*", "any", flow.protocol.lower()):
            continue
        if (
            any(_port_matches(p, port) for p in rule.ports)
            and any(_peer_matches(s, flow.peer, subnet_prefixes) for s in rule.peers(flow))
            and any(_local_matches(s, subnet_prefixes) for s in rule.locals(flow))
        ):
            return rule
    return None


def missing_nsg_rules(
    nsg_rules: Iterable[Any],
    *,
    subnet_prefixes: Iterable[str] = (),
    node_public_ip: bool = False,
    batch_node_inbound: bool = False,
) -> list[str]:
    """What the NSG lacks for Azure ML and Ray to work on the cluster nodes; empty when nothing.

    ``nsg_rules`` are the NSG's security rules as dicts (ARM JSON, camelCase or snake_case) or SDK
    ``SecurityRule`` objects; Azure's default rules are added when absent. NSG semantics: for each
    flow the rule with the lowest priority number that matches decides. The checked flows are
    :func:`required_flows` (current Azure ML guidance; no inbound rule for clusters without a public
    IP; ``batch_node_inbound``: also the seed's BatchNodeManagement rule).
    """
    rules = [_normalize(r) for r in nsg_rules]
    names = {r.name for r in rules}
    rules += [_normalize(d) for d in DEFAULT_RULES if d["name"] not in names]
    rules.sort(key=lambda r: r.priority)
    prefixes = tuple(subnet_prefixes)
    problems: list[str] = []
    for flow in required_flows(node_public_ip=node_public_ip, batch_node_inbound=batch_node_inbound):
        blockers: dict[str, tuple[_Rule | None, list[int]]] = {}
        for checked in _per_protocol(flow):
            for port in flow.ports:
                decided = _first_match(rules, checked, port, prefixes)
                if decided is None or decided.access.lower() != "allow":
                    key = decided.name if decided else "-"
                    ports = blockers.setdefault(key, (decided, []))[1]
                    if port not in ports:
                        ports.append(port)
        for rule, ports in blockers.values():
            problems.append(_explain(flow, rule, ports, rules, prefixes))
    return problems


def _per_protocol(flow: Flow) -> tuple[Flow, ...]:
    """A flow on any protocol is allowed only when both TCP and UDP are."""
    if flow.protocol != "*":
        return (flow,)
    return tuple(Flow(**{**flow.__dict__, "protocol": p}) for p in ("Tcp", "Udp"))


def _explain(
    flow: Flow, rule: _Rule | None, ports: list[int], rules: list[_Rule], prefixes: tuple[str, ...]
) -> str:
    port_text = flow.port_text if len(ports) == len(flow.ports) else ", ".join(str(p) for p in ports)
    tag = f"{flow.peer}.<region>" if flow.regional else flow.peer
    peer = "inside the VNet (VirtualNetwork)" if flow.peer == "VirtualNetwork" else f"service tag {tag}"
    inbound = flow.direction == "Inbound"
    way = "inbound" if inbound else "outbound"
    proto = "ANY" if flow.protocol == "*" else flow.protocol.upper()
    text = f"{way} {proto} {port_text} {'from' if inbound else 'to'} {peer} ({flow.what})"
    if rule is None:
        return f"{text}: no rule decides it; add an {way} Allow rule"
    late_allow = next(
        (
            r
            for r in rules
            if r.priority > rule.priority
            and r.priority < _DEFAULT_PRIORITY  # Azure's defaults cannot be moved
            and r.access.lower() == "allow"
            and all(_first_match([r], f, p, prefixes) for f in _per_protocol(flow) for p in ports)
        ),
        None,
    )
    if late_allow is not None:
        return (
            f"{text} is denied by rule {rule.name!r} (priority {rule.priority}) before the allow rule "
            f"{late_allow.name!r} (priority {late_allow.priority}); give the allow rule a priority "
            f"number below {rule.priority}"
        )
    side = "source" if inbound else "destination"
    return (
        f"{text} is denied by rule {rule.name!r} (priority {rule.priority}); add an {way} Allow rule: "
        f"{side} {tag}, protocol {proto}, destination ports {port_text}, priority below {rule.priority}"
    )


def nsg_name_and_group(resource_id: str) -> tuple[str, str]:
    """(resource group, NSG name) of an NSG resource id."""
    m = re.search(
        r"/resourceGroups/([^/]+)/providers/Microsoft\.Network/networkSecurityGroups/([^/]+)",
        resource_id,
        re.IGNORECASE,
    )
    if not m:
        raise ValueError(f"not a network security group id: {resource_id}")
    return m.group(1), m.group(2)
