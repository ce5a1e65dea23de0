"""An example environment package: importing it registers ``rlq_examples/Inventory-v0`` with gymnasium.

This is the convention rlq's environment catalog relies on (docs/environments.md): the catalog
names this module, and the trainer imports it before it builds the environment.
"""

from gymnasium.envs.registration import register

from rlq_inventory.env import InventoryEnv

register(id="rlq_examples/Inventory-v0", entry_point="rlq_inventory.env:InventoryEnv", max_episode_steps=100)

__all__ = ["InventoryEnv"]
