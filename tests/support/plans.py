"""What :func:`trainer.configure.algo_config` reads of a :class:`trainer.plan.Plan`, without the
argument parsing and the environment probe a real Plan does."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PlanStub:
    algorithm: str = "PPO"
    atari: bool = False
    seed: int | None = None
    discrete_actions: bool = True  # CartPole's and Atari's; Pendulum and MuJoCo pass False
