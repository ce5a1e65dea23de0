"""SAC and DQN: each preset builds and trains an iteration or two (no learning asserted: that is
bench/sac_dqn_targets.py), the replay settings reach RLlib's config, and an algorithm that cannot
act in the environment's action space stops the trainer before Ray starts (exit 2) naming both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from gymnasium import spaces

from tests.support.plans import PlanStub
from trainer import config_map, envs, presets
from trainer.config_map import UsageError


def train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def uri_to_path(uri: str) -> str:
    assert uri.startswith("file:///"), uri
    return uri.removeprefix("file://")


@pytest.mark.parametrize("algorithm, env_id", [("SAC", "Pendulum-v1"), ("DQN", "CartPole-v1")])
def test_each_preset_builds_and_trains_two_iterations(algorithm, env_id, tmp_path):
    p = train(
        "--run", algorithm, "--env", env_id, "--stop", '{"training_iteration": 2}',
        "--config", '{"replay_buffer_capacity": 5000, "num_steps_sampled_before_learning_starts": 64}',
        "--checkpoint-freq", "0", "--checkpoint-every-s", "0", "--output-dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    (summary,) = [json.loads(ln[12:]) for ln in p.stdout.splitlines() if ln.startswith("RLQ_SUMMARY ")]
    assert (summary["algorithm"], summary["env"], summary["iterations"]) == (algorithm, env_id, 2)
    assert summary["timesteps"] > 0
    # the learner ran: its losses are in the metrics
    rows = [json.loads(ln[12:]) for ln in p.stdout.splitlines() if ln.startswith("RLQ_METRICS ")]
    assert any("learner/qf_loss" in row for row in rows)
    # its final checkpoint plays greedy episodes (SAC: a continuous action within the Box's bounds)
    from trainer.evaluate import evaluate

    played = evaluate(uri_to_path(summary["checkpoint_path"]), episodes=1, seed=0)
    assert played["episodes"] == 1 and played["mean_length"] > 0
    if algorithm == "SAC":
        assert played["mean_length"] == 200  # Pendulum's time limit: the continuous actions were taken


@pytest.mark.parametrize(
    "algorithm, env_id, space",
    [("DQN", "Pendulum-v1", "Box"), ("DQN", "MountainCarContinuous-v0", "Box")],
)
def test_dqn_on_continuous_actions_exits_2_naming_run_and_env(algorithm, env_id, space, tmp_path):
    p = train("--run", algorithm, "--env", env_id, "--output-dir", str(tmp_path / "o"), timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"--run {algorithm} cannot train --env {env_id}" in p.stderr
    assert f"action space is {space}(" in p.stderr
    assert "ray_init_s" not in p.stdout + p.stderr  # refused before Ray started


def test_the_probe_refuses_what_each_algorithm_cannot_act_in():
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    multi = spaces.MultiDiscrete([3, 2])
    assert envs.algorithm_problem("DQN", "acme/Arm-v1", box).startswith(
        "--run DQN cannot train --env acme/Arm-v1"
    )
    assert "algorithms for it: IMPALA, APPO, PPO, SAC" in envs.algorithm_problem("DQN", "acme/Arm-v1", box)
    assert "--run SAC cannot train" in envs.algorithm_problem("SAC", "acme/Bid-v1", multi)
    assert envs.algorithm_problem("DQN", "acme/Bid-v1", multi) is not None
    assert envs.algorithm_problem("SAC", "acme/Grid-v1", spaces.Discrete(4)) is None
    for algorithm in ("IMPALA", "APPO", "PPO"):
        assert envs.algorithm_problem(algorithm, "acme/Arm-v1", box) is None


def test_the_replay_settings_reach_rllibs_config():
    from trainer.configure import algo_config

    settings = {
        **presets.preset("SAC", "Pendulum-v1", atari=False),
        **config_map.map_config({"replay_buffer_capacity": 5000, "tau": 0.01}, "SAC").settings,
    }
    config = algo_config(PlanStub("SAC", discrete_actions=False), settings, "Pendulum-v1", {})
    assert config.replay_buffer_config["capacity"] == 5000
    assert config.replay_buffer_config["type"] == "PrioritizedEpisodeReplayBuffer"  # the preset's
    assert (config.tau, config.n_step, config.actor_lr) == (0.01, (2, 5), 2e-4)


def test_config_keys_of_sac_and_dqn_apply_to_them_only():
    assert config_map.map_config({"epsilon": [[0, 1.0], [100, 0.1]]}, "DQN").settings["epsilon"] == [
        [0, 1.0],
        [100, 0.1],
    ]
    # the article's RMSProp epsilon is still dropped for the others
    assert config_map.map_config({"epsilon": 0.1}, "IMPALA").settings == {}
    with pytest.raises(UsageError, match="tau"):
        config_map.map_config({"tau": 0.01}, "PPO")
    with pytest.raises(UsageError, match="replay_buffer_capacity"):
        config_map.map_config({"replay_buffer_capacity": 2**22 + 1}, "DQN")


def test_a_greedy_box_action_is_rescaled_from_rllibs_minus_one_to_one_into_the_bounds():
    import torch
    from ray.rllib.core.columns import Columns

    from trainer.evaluate import greedy_action

    box = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    got = greedy_action(None, {Columns.ACTIONS: torch.tensor([[0.5, -3.0]])}, box)
    assert got.tolist() == [1.0, 0.0] and got.dtype == np.float32  # -3 clipped to -1 first
    assert greedy_action(None, {Columns.ACTIONS: torch.tensor([1])}, spaces.Discrete(2)) == 1
