"""MuJoCo is built in (the trainer extra installs gymnasium[mujoco]): a robot builds and steps
through the trainer's env creator as the networks see it, takes its own PPO and SAC presets, and
one small PPO iteration trains on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO_ROOT
from gymnasium import spaces

from shared.contracts.environments import MUJOCO
from trainer import config_map, envs, presets


def test_a_mujoco_robot_builds_and_steps_through_the_trainers_env_creator(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert envs.is_mujoco("HalfCheetah-v5") and not envs.is_mujoco("Pendulum-v1")
    assert all(envs.is_mujoco(env_id) for env_id in MUJOCO)  # every id intake accepts is registered
    seen = envs.probe("HalfCheetah-v5", None, {"forward_reward_weight": 2.0}, "SAC")
    assert seen.observation_space == spaces.Box(-np.inf, np.inf, (17,), np.float32)  # float64 as float32
    assert seen.action_space == spaces.Box(-1.0, 1.0, (6,), np.float32) and not envs.is_discrete(
        seen.action_space
    )
    env = envs.make_env(envs.env_config_for("HalfCheetah-v5", {}, None, {"forward_reward_weight": 2.0}))
    try:
        assert env.action_space == spaces.Box(-1.0, 1.0, (6,), np.float32)
        obs, _ = env.reset(seed=0)
        for _ in range(5):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.dtype == np.float32 and obs.shape == (17,) and np.isfinite(reward)
        assert not (terminated or truncated)
    finally:
        env.close()
    # MuJoCo's warnings (gymnasium's half_cheetah.xml sets a deprecated attribute) go to stderr, not
    # to a MUJOCO_LOG.TXT in the working directory
    assert list(tmp_path.iterdir()) == []
    assert "mujoco: compiler attribute 'settotalmass' is deprecated" in capfd.readouterr().err


def test_a_robot_renders_offscreen_for_the_replay_gif(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # a headless node: no display for GLFW
    env = envs.make_env({"env_id": "Hopper-v5", "render_mode": "rgb_array"})
    try:
        env.reset(seed=0)
        frame = env.render()
    finally:
        env.close()
    assert frame.dtype == np.uint8 and frame.shape == (480, 480, 3) and frame.std() > 0
    assert os.environ["MUJOCO_GL"] == "egl"


def test_ppo_and_sac_take_the_mujoco_presets_which_rllib_settings_accept():
    assert presets.preset("PPO", "HalfCheetah-v5", atari=False) == presets.MUJOCO_PPO
    assert presets.preset("SAC", "Hopper-v5", atari=False) == presets.MUJOCO_SAC
    assert (
        presets.preset("PPO", "Pendulum-v1", atari=False) == presets.VECTOR
    )  # classic control keeps its own
    assert presets.preset("PPO", "HalfCheetah-v5", atari=False, num_gpus=1)["num_gpus_per_learner"] == 1.0
    for algorithm in ("PPO", "SAC"):
        for key, value in presets.preset(algorithm, "Walker2d-v5", atari=False).items():
            _method, kind, algorithms = config_map.SETTINGS[key]
            assert algorithms is None or algorithm in algorithms, (algorithm, key)
            kind(key, value)


def test_one_small_ppo_iteration_trains_on_halfcheetah(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    p = subprocess.run(
        [
            sys.executable, "-m", "trainer.train", "--run", "PPO", "--env", "HalfCheetah-v5",
            "--stop", '{"training_iteration": 1}',
            "--config", '{"num_env_runners": 0, "train_batch_size_per_learner": 256, "num_epochs": 1}',
            "--checkpoint-freq", "0", "--checkpoint-every-s", "0", "--output-dir", str(tmp_path / "o"),
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert '"fcnet_activation": "tanh"' in p.stderr  # the MuJoCo preset, logged with the run's settings
    (summary,) = [json.loads(ln[12:]) for ln in p.stdout.splitlines() if ln.startswith("RLQ_SUMMARY ")]
    assert (summary["algorithm"], summary["env"], summary["iterations"]) == ("PPO", "HalfCheetah-v5", 1)
    assert summary["timesteps"] == 256
    (row,) = [json.loads(ln[12:]) for ln in p.stdout.splitlines() if ln.startswith("RLQ_METRICS ")]
    assert "learner/vf_loss" in row  # the learner updated on the robot's batch
