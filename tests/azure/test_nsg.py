"""The pure NSG evaluator: what the aml subnet's NSG must let through, evaluated as Azure does.

The flows follow Azure ML's current VNet guidance for compute clusters
(https://learn.microsoft.com/azure/machine-learning/how-to-secure-training-vnet,
https://learn.microsoft.com/azure/machine-learning/how-to-access-azureml-behind-firewall): no inbound
rule for clusters without a public IP, inbound TCP 44224 from ``AzureMachineLearning`` for clusters
with one, and outbound to the service tags the nodes talk to. The seed's inbound 29876-29877 from
``BatchNodeManagement`` is checked only when asked for.
"""

from __future__ import annotations

import pytest

from shared.adapters.compute.azureml.nsg import OUTBOUND_TAGS, missing_nsg_rules, required_flows
from tests.support.network_twin import INFRA_NSG_RULES

SUBNET = ["10.20.1.0/24"]


def rule(name: str, priority: int, direction: str, access: str, **fields: str | list[str]) -> dict:
    base = {
        "name": name,
        "priority": priority,
        "direction": direction,
        "access": access,
        "protocol": "Tcp",
        "sourceAddressPrefix": "*",
        "destinationAddressPrefix": "*",
        "destinationPortRange": "*",
    }
    return {**base, **fields}


DENY_INTERNET_OUT = rule(
    "DenyInternetOutbound", 4000, "Outbound", "Deny", protocol="*", destinationAddressPrefix="Internet"
)

# What the guidance asks for, no public IP: outbound allows to the service tags, the rest of the
# Internet denied, nothing inbound but the VNet (Azure's default AllowVnetInBound).
NO_PUBLIC_IP = [
    rule(
        "AllowAzureMachineLearning",
        100,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureMachineLearning",
        destinationPortRange="",
        destinationPortRanges=["443", "8787", "18881"],
    ),
    rule(
        "AllowAzureMachineLearningUdp",
        101,
        "Outbound",
        "Allow",
        protocol="Udp",
        destinationAddressPrefix="AzureMachineLearning",
        destinationPortRange="5831",
    ),
    rule(
        "AllowBatch",
        102,
        "Outbound",
        "Allow",
        protocol="*",
        destinationAddressPrefix="BatchNodeManagement.westeurope",
        destinationPortRange="443",
    ),
    rule(
        "AllowStorage",
        103,
        "Outbound",
        "Allow",
        destinationAddressPrefix="Storage.westeurope",
        destinationPortRange="443",
    ),
    rule(
        "AllowArm",
        104,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureResourceManager",
        destinationPortRange="443",
    ),
    rule(
        "AllowEntra",
        105,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureActiveDirectory",
        destinationPortRange="443",
    ),
    rule(
        "AllowMcr",
        106,
        "Outbound",
        "Allow",
        destinationAddressPrefix="MicrosoftContainerRegistry.westeurope",
        destinationPortRange="443",
    ),
    rule(
        "AllowFrontDoor",
        107,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureFrontDoor.FirstParty",
        destinationPortRange="443",
    ),
    rule(
        "AllowAcr",
        108,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureContainerRegistry.westeurope",
        destinationPortRange="443",
    ),
    rule(
        "AllowKeyVault",
        110,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureKeyVault.westeurope",
        destinationPortRange="443",
    ),
    rule(
        "AllowMonitor",
        109,
        "Outbound",
        "Allow",
        destinationAddressPrefix="AzureMonitor",
        destinationPortRange="443",
    ),
    DENY_INTERNET_OUT,
    rule("DenyInternetInbound", 4000, "Inbound", "Deny", protocol="*", sourceAddressPrefix="Internet"),
]
PUBLIC_IP_INBOUND = rule(
    "AllowAzureMachineLearningInbound",
    110,
    "Inbound",
    "Allow",
    sourceAddressPrefix="AzureMachineLearning",
    destinationPortRange="44224",
)
SEED_BATCH_INBOUND = rule(
    "AllowBatchNodeManagement",
    120,
    "Inbound",
    "Allow",
    sourceAddressPrefix="BatchNodeManagement",
    destinationPortRange="29876-29877",
)
# The seed's NSG: the two inbound rules and nothing about outbound (Azure's defaults allow it).
SEED = [
    SEED_BATCH_INBOUND,
    PUBLIC_IP_INBOUND,
    rule("DenyInternet", 4000, "Inbound", "Deny", protocol="*", sourceAddressPrefix="Internet"),
]


def test_current_guidance_without_public_ip_is_complete() -> None:
    assert missing_nsg_rules(NO_PUBLIC_IP, subnet_prefixes=SUBNET) == []


def test_no_public_ip_needs_no_inbound_rule_at_all() -> None:
    flows = required_flows(node_public_ip=False, batch_node_inbound=False)
    inbound = [f for f in flows if f.direction == "Inbound"]
    assert {f.peer for f in inbound} == {"VirtualNetwork"}  # only Ray between the nodes
    # Azure's default rules alone (outbound to the Internet allowed) satisfy a no-public-IP cluster
    assert missing_nsg_rules([], subnet_prefixes=SUBNET) == []


def test_public_ip_clusters_need_azure_machine_learning_inbound_44224() -> None:
    [problem] = missing_nsg_rules(NO_PUBLIC_IP, subnet_prefixes=SUBNET, node_public_ip=True)
    assert problem.startswith("inbound TCP 44224 from service tag AzureMachineLearning")
    assert "'DenyInternetInbound' (priority 4000)" in problem
    assert (
        missing_nsg_rules([*NO_PUBLIC_IP, PUBLIC_IP_INBOUND], subnet_prefixes=SUBNET, node_public_ip=True)
        == []
    )


def test_seed_batch_rule_is_required_only_with_the_compat_option() -> None:
    assert missing_nsg_rules(NO_PUBLIC_IP, subnet_prefixes=SUBNET) == []  # not needed by default
    [problem] = missing_nsg_rules(NO_PUBLIC_IP, subnet_prefixes=SUBNET, batch_node_inbound=True)
    assert problem.startswith("inbound TCP 29876-29877 from service tag BatchNodeManagement")
    assert "source BatchNodeManagement, protocol TCP, destination ports 29876-29877" in problem


def test_seed_rules_are_accepted_with_the_compat_option() -> None:
    assert missing_nsg_rules(SEED, subnet_prefixes=SUBNET, node_public_ip=True, batch_node_inbound=True) == []
    # and without the batch rule the compat check names it
    [problem] = missing_nsg_rules(
        SEED[1:], subnet_prefixes=SUBNET, node_public_ip=True, batch_node_inbound=True
    )
    assert problem.startswith(
        "inbound TCP 29876-29877 from service tag BatchNodeManagement (the seed's Azure ML node "
        "management rule, RLQ_AZUREML_NSG_BATCH_INBOUND) is denied by rule 'DenyInternet'"
    )


@pytest.mark.parametrize(
    ("dropped", "wanted"),
    [
        ("AllowStorage", "outbound TCP 443 to service tag Storage.<region>"),
        ("AllowBatch", "outbound ANY 443 to service tag BatchNodeManagement.<region>"),
        ("AllowAzureMachineLearningUdp", "outbound UDP 5831 to service tag AzureMachineLearning"),
        ("AllowArm", "outbound TCP 443 to service tag AzureResourceManager"),
        ("AllowFrontDoor", "outbound TCP 443 to service tag AzureFrontDoor.FirstParty"),
    ],
)
def test_a_missing_outbound_rule_is_named(dropped: str, wanted: str) -> None:
    rules = [r for r in NO_PUBLIC_IP if r["name"] != dropped]
    [problem] = missing_nsg_rules(rules, subnet_prefixes=SUBNET)
    assert problem.startswith(wanted), problem
    assert "denied by rule 'DenyInternetOutbound' (priority 4000)" in problem
    assert "add an outbound Allow rule: destination " in problem and "priority below 4000" in problem


def test_every_outbound_tag_of_the_guidance_is_checked() -> None:
    flows = required_flows(node_public_ip=False, batch_node_inbound=False)
    outbound = {f.peer for f in flows if f.direction == "Outbound" and f.peer != "VirtualNetwork"}
    assert outbound == set(OUTBOUND_TAGS)
    assert {
        "AzureMachineLearning",
        "BatchNodeManagement",
        "Storage",
        "AzureResourceManager",
        "AzureActiveDirectory",
        "MicrosoftContainerRegistry",
        "AzureFrontDoor.FirstParty",
    } <= outbound


def test_a_deny_all_outbound_before_the_allows_names_each_blocked_flow() -> None:
    rules = [*NO_PUBLIC_IP, rule("DenyAllOut", 50, "Outbound", "Deny", protocol="*")]
    problems = missing_nsg_rules(rules, subnet_prefixes=SUBNET)
    joined = " | ".join(problems)
    assert (
        "outbound TCP 443 to service tag Storage.<region> (Azure Storage of the Batch pool and the "
        "workspace) is denied by rule 'DenyAllOut' (priority 50) before the allow rule 'AllowStorage' "
        "(priority 103); give the allow rule a priority number below 50" in joined
    )
    assert "outbound TCP 6379, 8265, 10001, 10002-19999 to inside the VNet" in joined  # Ray, too
    assert len(problems) == len(OUTBOUND_TAGS) + 2  # + UDP 5831 + Ray


def test_an_outbound_allow_for_another_source_does_not_count() -> None:
    rules = [
        dict(r, sourceAddressPrefix="10.99.0.0/24") if r["name"] == "AllowStorage" else r
        for r in NO_PUBLIC_IP
    ]
    [problem] = missing_nsg_rules(rules, subnet_prefixes=SUBNET)
    assert problem.startswith("outbound TCP 443 to service tag Storage.<region>")


def test_a_deny_with_a_lower_priority_number_wins_over_the_allow() -> None:
    rules = [*SEED, rule("DenyAllTcp", 50, "Inbound", "Deny")]
    problems = missing_nsg_rules(rules, node_public_ip=True, batch_node_inbound=True)
    joined = " | ".join(problems)
    assert (
        "denied by rule 'DenyAllTcp' (priority 50) before the allow rule 'AllowBatchNodeManagement' "
        "(priority 120); give the allow rule a priority number below 50" in joined
    )
    assert "AllowAzureMachineLearningInbound' (priority 110)" in joined
    assert "inside the VNet" in joined  # Ray is blocked too: AllowVnetInBound comes after
    assert len(problems) == 3


def test_only_one_port_of_the_range_allowed() -> None:
    rules = [dict(SEED_BATCH_INBOUND, destinationPortRange="29876"), PUBLIC_IP_INBOUND]
    [problem] = missing_nsg_rules(rules, node_public_ip=True, batch_node_inbound=True)
    assert problem.startswith("inbound TCP 29877 from service tag BatchNodeManagement")


def test_udp_only_or_outbound_rules_do_not_count_for_an_inbound_tcp_flow() -> None:
    rules = [dict(SEED_BATCH_INBOUND, protocol="Udp"), dict(PUBLIC_IP_INBOUND, direction="Outbound")]
    problems = missing_nsg_rules(rules, node_public_ip=True, batch_node_inbound=True)
    assert [p.split(" from ")[1].split(" (")[0] for p in problems] == [
        "service tag AzureMachineLearning",
        "service tag BatchNodeManagement",
    ]


def test_regional_tags_port_lists_and_any_source_are_understood() -> None:
    rules = [
        rule(
            "batch",
            200,
            "Inbound",
            "Allow",
            sourceAddressPrefixes=["BatchNodeManagement.WestEurope"],
            destinationPortRanges=["29876", "29877"],
        ),
        rule("any44224", 210, "Inbound", "Allow", protocol="*", destinationPortRange="44000-44500"),
    ]
    assert missing_nsg_rules(rules, node_public_ip=True, batch_node_inbound=True) == []


def test_deny_from_the_subnet_cidr_blocks_ray_and_says_which_ports() -> None:
    rules = [
        *NO_PUBLIC_IP,
        rule(
            "DenyRayDashboard",
            300,
            "Inbound",
            "Deny",
            sourceAddressPrefix="10.20.0.0/16",
            destinationPortRange="8265",
        ),
    ]
    [problem] = missing_nsg_rules(rules, subnet_prefixes=SUBNET)
    assert problem.startswith("inbound TCP 8265 from inside the VNet")
    assert "'DenyRayDashboard' (priority 300)" in problem
    # the same deny from an unrelated range does not touch the subnet's traffic
    assert missing_nsg_rules(rules, subnet_prefixes=["192.168.0.0/24"]) == []


def test_sdk_rule_objects_are_accepted() -> None:
    from azure.mgmt.network.models import SecurityRule

    def sdk(r: dict) -> SecurityRule:
        return SecurityRule(
            name=r["name"],
            priority=r["priority"],
            direction=r["direction"],
            access=r["access"],
            protocol=r["protocol"],
            source_address_prefix=r["sourceAddressPrefix"],
            destination_address_prefix=r["destinationAddressPrefix"],
            destination_port_range=r["destinationPortRange"] or None,
            destination_port_ranges=r.get("destinationPortRanges"),
        )

    rules = [sdk(r) for r in NO_PUBLIC_IP]
    assert missing_nsg_rules(rules, subnet_prefixes=SUBNET) == []
    [problem] = missing_nsg_rules(
        [sdk(r) for r in NO_PUBLIC_IP if r["name"] != "AllowArm"], subnet_prefixes=SUBNET
    )
    assert "AzureResourceManager" in problem


def test_the_twins_nsg_is_complete_for_the_default_clusters() -> None:
    assert missing_nsg_rules(INFRA_NSG_RULES, subnet_prefixes=SUBNET) == []
    assert not [
        r
        for r in INFRA_NSG_RULES
        if r["direction"] == "Inbound"
        and r["access"] == "Allow"
        and r["source_address_prefix"] != "10.20.1.0/24"
    ]


def test_the_guard_checks_the_flows_the_settings_name() -> None:
    from types import SimpleNamespace

    from shared.adapters.compute.azureml.clusters import NsgGuard
    from shared.errors import ComputeError
    from shared.settings import Settings
    from tests.support.network_twin import NetworkTwin

    where = SimpleNamespace(vnet="rlq-vnet", subnet="aml", vnet_resource_group="rlq-rg")
    twin = NetworkTwin()
    base = Settings(_env_file=None, backend="azureml", azureml_vnet="rlq-vnet", azureml_subnet="aml")
    assert (base.azureml_node_public_ip, base.azureml_nsg_batch_inbound) == (False, False)
    NsgGuard(base, twin.client).check(where)  # the template's NSG: nothing missing
    public = base.model_copy(update={"azureml_node_public_ip": True})
    with pytest.raises(ComputeError, match="inbound TCP 44224 from service tag AzureMachineLearning"):
        NsgGuard(public, twin.client).check(where)
    seed = base.model_copy(update={"azureml_nsg_batch_inbound": True})
    with pytest.raises(ComputeError, match="inbound TCP 29876-29877 from service tag BatchNodeManagement"):
        NsgGuard(seed, twin.client).check(where)
    # the settings' environment names parse
    env = Settings(_env_file=None, azureml_node_public_ip="true", azureml_nsg_batch_inbound="1")
    assert (env.azureml_node_public_ip, env.azureml_nsg_batch_inbound) == (True, True)


def test_batch_node_management_must_be_open_on_any_protocol() -> None:
    """how-to-secure-training-vnet lists BatchNodeManagement.<region> on ANY protocol, port 443: an
    allow for TCP only leaves UDP 443 to the Internet deny."""
    tcp_only = [dict(r, protocol="Tcp") if r["name"] == "AllowBatch" else r for r in NO_PUBLIC_IP]
    [problem] = missing_nsg_rules(tcp_only, subnet_prefixes=SUBNET)
    assert problem.startswith("outbound ANY 443 to service tag BatchNodeManagement.<region>"), problem
    assert "protocol ANY, destination ports 443" in problem


def test_azure_machine_learning_must_be_open_on_the_three_tcp_ports() -> None:
    """AzureMachineLearning: TCP 443, 8787 and 18881 (and UDP 5831); 443 alone is not enough."""
    only_443 = [
        dict(r, destinationPortRange="443", destinationPortRanges=[])
        if r["name"] == "AllowAzureMachineLearning"
        else r
        for r in NO_PUBLIC_IP
    ]
    [problem] = missing_nsg_rules(only_443, subnet_prefixes=SUBNET)
    assert problem.startswith("outbound TCP 8787, 18881 to service tag AzureMachineLearning"), problem
