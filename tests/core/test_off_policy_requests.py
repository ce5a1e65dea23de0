"""SAC and DQN at intake: both accepted where they can act, a combination that cannot work refused
naming both ``algorithm`` and ``env``, and their replay settings allow-listed with bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.contracts.parsing import field_errors
from shared.contracts.request import TrainingRequest
from tests.poison.conftest import names_field

STOP = {"training_iteration": 2}


def refusal(**body) -> dict[str, str]:
    with pytest.raises(ValidationError) as err:
        TrainingRequest(request_id="r", stop=STOP, **body)
    (only,) = field_errors(err.value)
    return only


@pytest.mark.parametrize(
    "algorithm, env",
    [
        ("SAC", "Pendulum-v1"),
        ("SAC", "MountainCarContinuous-v0"),
        ("SAC", "CartPole-v1"),  # RLlib 2.60's SAC takes Discrete actions too
        ("DQN", "CartPole-v1"),
        ("DQN", "FrozenLake-v1"),
        ("DQN", "PongNoFrameskip-v4"),
        ("DQN", "acme/Warehouse-v1"),  # a catalogued env's space: the trainer's probe checks it
    ],
)
def test_sac_and_dqn_are_accepted_where_they_can_act(algorithm, env):
    assert TrainingRequest(request_id="r", algorithm=algorithm, env=env, stop=STOP).algorithm == algorithm


@pytest.mark.parametrize("env", ["Pendulum-v1", "MountainCarContinuous-v0", "HalfCheetah-v5"])
def test_dqn_on_continuous_actions_is_refused_naming_algorithm_and_env(env):
    got = refusal(algorithm="DQN", env=env)
    assert got["field"] == "env"
    assert names_field(got["message"], "algorithm") and names_field(got["message"], "env")
    assert f"algorithm DQN cannot train env {env}" in got["message"]


@pytest.mark.parametrize(
    "config",
    [
        {"replay_buffer_capacity": 50_000, "n_step": [2, 5], "tau": 0.01, "initial_alpha": 0.5},
        {"actor_lr": 0.0003, "critic_lr": 0.001, "alpha_lr": 0.001, "training_intensity": 2},
        {"double_q": False, "dueling": True, "epsilon": [[0, 1.0], [5000, 0.05]]},
        {"target_network_update_freq": 500, "num_steps_sampled_before_learning_starts": 1000},
    ],
)
def test_the_replay_settings_a_request_may_set(config):
    assert TrainingRequest(
        request_id="r", algorithm="SAC", env="Pendulum-v1", stop=STOP, config=config
    ).config


@pytest.mark.parametrize(
    "config, named",
    [
        ({"replay_buffer_capacity": 2**22 + 1}, "replay_buffer_capacity"),
        ({"replay_buffer_capacity": 0}, "replay_buffer_capacity"),
        ({"n_step": 101}, "n_step"),
        ({"tau": 1.5}, "tau"),
        ({"training_intensity": 0}, "training_intensity"),
        ({"replay_buffer_config": {"type": "EpisodeReplayBuffer"}}, "replay_buffer_config"),
    ],
)
def test_replay_settings_past_their_bounds_are_refused_naming_the_key(config, named):
    got = refusal(algorithm="SAC", env="Pendulum-v1", config=config)
    assert got["field"] == "config" and named in got["message"]
