"""Presets by space: every supported observation / action space combination, built from
gymnasium's own spaces, reaches an RLlib RLModule that acts on it; an unsupported space is refused
when the trainer starts, naming the space."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from trainer import envs, presets
from trainer.config_map import UsageError

VECTOR = spaces.Box(-1.0, 1.0, (5,), np.float32)
OBSERVATIONS = {
    "vector Box": VECTOR,
    "image Box": spaces.Box(0, 255, (36, 28, 3), np.uint8),
    "matrix Box": spaces.Box(-1.0, 1.0, (3, 4), np.float64),  # another rank: flattened, as float32
    "Discrete": spaces.Discrete(7),
    "MultiDiscrete": spaces.MultiDiscrete([3, 4]),
    "MultiBinary": spaces.MultiBinary(6),
    "Dict": spaces.Dict({"level": spaces.Box(0.0, 1.0, (2,), np.float32), "mode": spaces.Discrete(3)}),
    "Tuple": spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11), spaces.Discrete(2))),  # Blackjack's
}
ACTIONS = {
    "Discrete": spaces.Discrete(4),
    "MultiDiscrete": spaces.MultiDiscrete([3, 2]),
    "Box": spaces.Box(-2.0, 2.0, (2,), np.float32),
}


class SpacesEnv(gym.Env):
    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def act(env: gym.Env, settings: dict) -> dict:
    """An RLlib PPO RLModule built for the env's spaces with the preset's model settings: one forward
    pass over observations the env returned."""
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.columns import Columns

    model = {
        k: v
        for k, v in settings.items()
        if k in ("fcnet_hiddens", "conv_filters", "head_fcnet_hiddens", "vf_share_layers")
    }
    config = PPOConfig().framework("torch").rl_module(model_config=model)
    spec = config.get_default_rl_module_spec()
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    spec.model_config = config.model_config
    module = spec.build()
    batch = np.stack([env.reset(seed=seed)[0] for seed in range(3)])
    return module.forward_exploration({Columns.OBS: torch.from_numpy(batch)})


@pytest.mark.parametrize("action", ACTIONS, ids=[f"actions {a}" for a in ACTIONS])
@pytest.mark.parametrize("observation", OBSERVATIONS, ids=[f"obs {o}" for o in OBSERVATIONS])
def test_each_supported_combination_gets_a_network_that_acts(observation, action):
    env = SpacesEnv(OBSERVATIONS[observation], ACTIONS[action])
    assert envs.space_problem(env.observation_space, env.action_space) is None
    prepared = envs.prepare(env)
    seen = prepared.observation_space
    image = envs.is_image(seen)
    assert image == (observation == "image Box")
    assert isinstance(seen, spaces.Box) and len(seen.shape) == (3 if image else 1)
    assert prepared.observation_space.contains(prepared.reset(seed=0)[0])
    settings = presets.preset("PPO", "acme/Any-v0", atari=False, image=image)
    assert ("conv_filters" in settings) == image
    assert seen.dtype == np.float32
    out = act(prepared, settings)
    assert out["action_dist_inputs"].shape[0] == 3


@pytest.mark.parametrize(
    "observation, action, named",
    [
        (spaces.Text(8), ACTIONS["Discrete"], "observation space Text("),
        (spaces.Dict({"note": spaces.Text(4)}), ACTIONS["Discrete"], "observation space Dict("),
        (VECTOR, spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), "action space Tuple("),
        (VECTOR, spaces.MultiBinary(3), "action space MultiBinary("),
        (VECTOR, spaces.Box(-1.0, 1.0, (2, 2), np.float32), "action space Box("),
    ],
)
def test_an_unsupported_space_is_refused_at_trainer_start_naming_it(observation, action, named):
    gym.register("rlq_test/Spaces-v0", entry_point=lambda: SpacesEnv(observation, action))
    try:
        with pytest.raises(UsageError) as err:
            envs.probe("rlq_test/Spaces-v0", None, {})
    finally:
        gym.registry.pop("rlq_test/Spaces-v0")
    assert str(err.value).startswith("--env: rlq_test/Spaces-v0: " + named)
    assert "is not supported; supported:" in str(err.value)


def test_the_built_in_families_build_and_pass_the_space_check():
    for env_id in (
        "FrozenLake-v1",
        "Taxi-v3",
        "CliffWalking-v1",
        "Blackjack-v1",
        "MountainCarContinuous-v0",
        "Acrobot-v1",
    ):
        seen = envs.probe(env_id, None, {}).observation_space
        assert isinstance(seen, spaces.Box) and len(seen.shape) == 1, env_id
    assert envs.probe(
        "FrozenLake-v1", None, {"map_name": "8x8", "is_slippery": False}
    ).observation_space.shape == (64,)
