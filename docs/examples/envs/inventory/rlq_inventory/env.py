"""Inventory restocking: each day a shop sees random demand and decides how much to reorder.

Observation (vector ``Box``, all in [0, 1]): stock on hand, the orders still on their way (one slot
per day of lead time), and yesterday's demand, each divided by the shelf's capacity. Action
(``Discrete``): order 0 .. ``max_order`` units, arriving after ``lead_time`` days. Reward per day:
``price`` per unit sold, less ``holding_cost`` per unit on the shelf overnight, ``stockout_cost``
per unit of demand not met and ``order_cost`` per order placed, divided by ``price * demand_mean``
so a good day is worth about 1.

``env_config`` changes the difficulty: a longer ``lead_time`` or a noisier demand
(``demand_mean`` Poisson demand, or with ``demand_spread`` a day's mean drawn between
``demand_mean * (1 - spread)`` and ``demand_mean * (1 + spread)``) makes it harder to keep the
shelf full without overstocking.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class InventoryEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        capacity: int = 20,
        max_order: int = 10,
        lead_time: int = 1,
        demand_mean: float = 4.0,
        demand_spread: float = 0.0,
        price: float = 1.0,
        holding_cost: float = 0.05,
        stockout_cost: float = 0.5,
        order_cost: float = 0.2,
        render_mode: str | None = None,
    ):
        if not 1 <= int(capacity) <= 1000:
            raise ValueError(f"capacity must be between 1 and 1000, got {capacity!r}")
        if not 1 <= int(max_order) <= int(capacity):
            raise ValueError(f"max_order must be between 1 and capacity ({capacity}), got {max_order!r}")
        if not 0 <= int(lead_time) <= 10:
            raise ValueError(f"lead_time must be between 0 and 10 days, got {lead_time!r}")
        if not 0 < float(demand_mean) <= capacity:
            raise ValueError(
                f"demand_mean must be above 0 and at most capacity ({capacity}), got {demand_mean!r}"
            )
        if not 0 <= float(demand_spread) <= 1:
            raise ValueError(f"demand_spread must be between 0 and 1, got {demand_spread!r}")
        self.capacity, self.max_order, self.lead_time = int(capacity), int(max_order), int(lead_time)
        self.demand_mean, self.demand_spread = float(demand_mean), float(demand_spread)
        self.price, self.holding_cost = float(price), float(holding_cost)
        self.stockout_cost, self.order_cost = float(stockout_cost), float(order_cost)
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(self.max_order + 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2 + self.lead_time,), dtype=np.float32)
        self.stock = 0
        self.pipeline: list[int] = [0] * self.lead_time
        self.last_demand = 0

    def _obs(self) -> np.ndarray:
        values = [self.stock, *self.pipeline, self.last_demand]
        return np.clip(np.asarray(values, dtype=np.float32) / self.capacity, 0.0, 1.0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.stock = int(self.np_random.integers(0, self.capacity // 2 + 1))
        self.pipeline = [0] * self.lead_time
        self.last_demand = 0
        return self._obs(), {}

    def step(self, action):
        order = int(action)
        if self.lead_time:
            self.pipeline.append(order)
            self.stock = min(self.capacity, self.stock + self.pipeline.pop(0))
        else:
            self.stock = min(self.capacity, self.stock + order)
        mean = self.demand_mean
        if self.demand_spread:
            mean *= 1 + self.demand_spread * (2 * self.np_random.random() - 1)
        demand = int(self.np_random.poisson(mean))
        sold = min(demand, self.stock)
        self.stock -= sold
        self.last_demand = demand
        money = (
            self.price * sold
            - self.holding_cost * self.stock
            - self.stockout_cost * (demand - sold)
            - (self.order_cost if order else 0.0)
        )
        reward = money / (self.price * self.demand_mean)
        return self._obs(), float(reward), False, False, {"sold": sold, "demand": demand}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = np.full((64, 64, 3), 255, dtype=np.uint8)
        height = int(60 * self.stock / self.capacity)
        frame[62 - height : 62, 8:28] = (40, 120, 200)  # on the shelf
        height = int(60 * min(sum(self.pipeline), self.capacity) / self.capacity)
        frame[62 - height : 62, 36:56] = (230, 160, 40)  # on the way
        return frame
