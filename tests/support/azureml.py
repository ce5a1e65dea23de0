"""The Azure ML workspace the tests run against: its coordinates and the settings that point at it."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

SUBSCRIPTION_ID = "11111111-2222-3333-4444-555555555555"
RESOURCE_GROUP = "rlq-rg"
WORKSPACE_NAME = "rlq-ws"

# The keyword arguments the workspace twin (``MLClientTwin``) takes for it.
WORKSPACE = {
    "subscription_id": SUBSCRIPTION_ID,
    "resource_group": RESOURCE_GROUP,
    "workspace": WORKSPACE_NAME,
}

# The seed's multi-node request: IMPALA on Pong, a GPU head and four CPU workers (no request_id).
PONG_REQUEST = {
    "experiment": "rllib-pong-multi-node",
    "algorithm": "IMPALA",
    "env": "PongNoFrameskip-v4",
    "stop": {"episode_reward_mean": 18, "time_total_s": 3600},
    "compute": {
        "head": {"name": "head-gpu", "vm_size": "STANDARD_NC4AS_T4_V3", "max_nodes": 1},
        "workers": {"name": "worker-cpu", "vm_size": "STANDARD_D4AS_V5", "node_count": 4, "max_nodes": 4},
    },
}


def azureml_settings(**fields: Any) -> Settings:
    """Settings for ``RLQ_BACKEND=azureml`` on the workspace, its clusters in VNet ``rlq-vnet`` subnet
    ``aml``, no env file read; ``fields`` add settings or replace these."""
    return Settings(
        **{
            "backend": "azureml",
            "azureml_subscription_id": SUBSCRIPTION_ID,
            "azureml_resource_group": RESOURCE_GROUP,
            "azureml_workspace": WORKSPACE_NAME,
            "azureml_vnet": "rlq-vnet",
            "azureml_subnet": "aml",
            "_env_file": None,
            **fields,
        }
    )
