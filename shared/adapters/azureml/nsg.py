"""Does a subnet's network security group let Azure ML and Ray reach the cluster nodes? (pure)

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
class InboundNeed:
    what: str
    source: str  # a service tag, or "VirtualNetwork" for traffic inside the VNet
    ports: tuple[int, ...]
    port_text: str


INBOUND_NEEDS = (
    InboundNeed("Azure ML node management (Batch)", "BatchNodeManagement", (29876, 29877), "29876-29877"),
    InboundNeed("Azure ML service", "AzureMachineLearning", (44224,), "44224"),
    # GCS, dashboard, client server, first and last default worker ports
    InboundNeed(
        "Ray between head and workers",
        "VirtualNetwork",
        (6379, 8265, 10001, 10002, 19999),
        "6379, 8265, 10001, 10002-19999",
    ),
)

# Azure adds these to every NSG; a rule list without them is completed with them.
DEFAULT_INBOUND = (
    {
        "name": "AllowVnetInBound",
        "priority": 65000,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "*",
        "source_address_prefix": "VirtualNetwork",
        "destination_port_range": "*",
    },
    {
        "name": "AllowAzureLoadBalancerInBound",
        "priority": 65001,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "*",
        "source_address_prefix": "AzureLoadBalancer",
        "destination_port_range": "*",
    },
    {
        "name": "DenyAllInBound",
        "priority": 65500,
        "direction": "Inbound",
        "access": "Deny",
        "protocol": "*",
        "source_address_prefix": "*",
        "destination_port_range": "*",
    },
)


@dataclass(frozen=True)
class _Rule:
    name: str
    priority: int
    direction: str
    access: str
    protocol: str
    sources: tuple[str, ...]
    ports: tuple[str, ...]


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


def _normalize(rule: Any) -> _Rule:
    sources = [_field(rule, "source_address_prefix"), *list(_field(rule, "source_address_prefixes") or [])]
    ports = [_field(rule, "destination_port_range"), *list(_field(rule, "destination_port_ranges") or [])]
    return _Rule(
        name=str(_field(rule, "name") or "?"),
        priority=int(_field(rule, "priority") or 0),
        direction=str(_field(rule, "direction") or ""),
        access=str(_field(rule, "access") or ""),
        protocol=str(_field(rule, "protocol") or "*"),
        sources=tuple(str(s) for s in sources if s),
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


def _source_matches(prefix: str, source: str, subnet_prefixes: tuple[str, ...]) -> bool:
    p = prefix.strip()
    if p in ("*", "Any", "0.0.0.0/0"):
        return True
    if source == "VirtualNetwork":
        if p == "VirtualNetwork":
            return True
        try:
            net = ipaddress.ip_network(p, strict=False)
        except ValueError:
            return False
        return any(net.overlaps(ipaddress.ip_network(s, strict=False)) for s in subnet_prefixes if s)
    # an Azure service's public addresses: its tag (optionally regional) or the Internet tag
    return p == source or p.startswith(source + ".") or p == "Internet"


def _first_match(
    rules: list[_Rule], need: InboundNeed, port: int, subnet_prefixes: tuple[str, ...]
) -> _Rule | None:
    for rule in rules:
        if rule.direction.lower() != "inbound" or rule.protocol.lower() not in ("*", "tcp"):
            continue
        if any(_port_matches(p, port) for p in rule.ports) and any(
            _source_matches(s, need.source, subnet_prefixes) for s in rule.sources
        ):
            return rule
    return None


def missing_nsg_rules(nsg_rules: Iterable[Any], *, subnet_prefixes: Iterable[str] = ()) -> list[str]:
    """What the NSG lacks for Azure ML and Ray to reach the cluster nodes; empty when nothing.

    ``nsg_rules`` are the NSG's security rules as dicts (ARM JSON, camelCase or snake_case) or SDK
    ``SecurityRule`` objects; Azure's default rules are added when absent. NSG semantics: for each
    flow the rule with the lowest priority number that matches decides. Checked flows (inbound,
    TCP): 29876-29877 from ``BatchNodeManagement``, 44224 from ``AzureMachineLearning``, and Ray's
    ports from inside the VNet. Rules naming specific public CIDRs are not assumed to cover a
    service tag.
    """
    rules = [_normalize(r) for r in nsg_rules]
    names = {r.name for r in rules}
    rules += [_normalize(d) for d in DEFAULT_INBOUND if d["name"] not in names]
    rules.sort(key=lambda r: r.priority)
    prefixes = tuple(subnet_prefixes)
    problems: list[str] = []
    for need in INBOUND_NEEDS:
        blockers: dict[str, tuple[_Rule | None, list[int]]] = {}
        for port in need.ports:
            decided = _first_match(rules, need, port, prefixes)
            if decided is None or decided.access.lower() != "allow":
                key = decided.name if decided else "-"
                blockers.setdefault(key, (decided, []))[1].append(port)
        for rule, ports in blockers.values():
            problems.append(_explain(need, rule, ports, rules, prefixes))
    return problems


def _explain(
    need: InboundNeed, rule: _Rule | None, ports: list[int], rules: list[_Rule], prefixes: tuple[str, ...]
) -> str:
    port_text = need.port_text if len(ports) == len(need.ports) else ", ".join(str(p) for p in ports)
    src = (
        "inside the VNet (VirtualNetwork)"
        if need.source == "VirtualNetwork"
        else f"service tag {need.source}"
    )
    flow = f"inbound TCP {port_text} from {src} ({need.what})"
    if rule is None:
        return f"{flow}: no rule decides it; add an inbound Allow rule"
    late_allow = next(
        (
            r
            for r in rules
            if r.priority > rule.priority
            and r.access.lower() == "allow"
            and all(_first_match([r], need, p, prefixes) for p in ports)
        ),
        None,
    )
    if late_allow is not None:
        return (
            f"{flow} is denied by rule {rule.name!r} (priority {rule.priority}) before the allow rule "
            f"{late_allow.name!r} (priority {late_allow.priority}); give the allow rule a priority "
            f"number below {rule.priority}"
        )
    source = "VirtualNetwork" if need.source == "VirtualNetwork" else need.source
    return (
        f"{flow} is denied by rule {rule.name!r} (priority {rule.priority}); add an inbound Allow rule: "
        f"source {source}, protocol TCP, destination ports {port_text}, priority below {rule.priority}"
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
