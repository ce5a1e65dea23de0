"""The trainer's start-up: what it asks RLlib to start before the first iteration."""

from __future__ import annotations

import pytest

from trainer import configure, presets, train


def _cfg(*argv: str):
    plan = train.Plan(train.parse_args(["--output-dir", "/tmp/rlq-startup-test", *argv]))
    settings = presets.preset(plan.algorithm, plan.env_id, plan.atari)
    settings.update(plan.mapped.settings)
    settings.setdefault("num_env_runners", 1)
    return configure.algo_config(plan, settings, "rlq-test-env", {"env_id": plan.env_id})


@pytest.mark.parametrize("algorithm", ["IMPALA", "APPO"])
def test_cartpole_with_one_env_runner_starts_no_state_server_actor(algorithm):
    cfg = _cfg("--run", algorithm, "--env", "CartPole-v1", "--config", '{"num_env_runners": 1}')
    assert cfg.num_env_runners == 1
    assert cfg.use_env_runner_state_server is False


def test_the_cartpole_impala_preset_starts_no_actor_and_appo_keeps_its_two():
    impala = _cfg("--run", "IMPALA", "--env", "CartPole-v1")
    assert (impala.num_env_runners, impala.num_learners) == (0, 0)  # sampling and learning in the driver
    assert impala.use_env_runner_state_server is False
    appo = _cfg("--run", "APPO", "--env", "CartPole-v1")
    assert (appo.num_env_runners, appo.num_learners) == (1, 1)  # one EnvRunner, RLlib's remote Learner


def test_several_env_runners_and_atari_keep_rllibs_state_server():
    assert _cfg(
        "--run", "IMPALA", "--env", "CartPole-v1", "--config", '{"num_env_runners": 2}'
    ).use_env_runner_state_server
    assert _cfg("--run", "IMPALA", "--env", "PongNoFrameskip-v4").use_env_runner_state_server


def test_discrete_actions_skip_rllibs_action_rescaling_and_a_box_keeps_it():
    """RLlib's NormalizeAndClipActions deep-copies every vectorised step's actions to rescale them,
    which does nothing to Discrete ones: the trainer turns it off there, and only there. Breaks
    when the plan stops reading the action space from its probe, or the switch is set for a Box
    (Pendulum's torque would then reach the env unscaled)."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    box = _cfg("--run", "PPO", "--env", "Pendulum-v1")
    assert (box.normalize_actions, box.clip_actions) == (True, False)  # RLlib's defaults, kept
    plan = train.Plan(
        train.parse_args(["--output-dir", "/tmp/rlq-startup-test", "--run", "PPO", "--env", "CartPole-v1"])
    )
    assert plan.env_id == "CartPole-v1" and plan.discrete_actions
    settings = {**presets.preset("PPO", "CartPole-v1", atari=False), "num_envs_per_env_runner": 4}
    cfg = configure.algo_config(plan, settings, "CartPole-v1", {})
    assert (cfg.normalize_actions, cfg.clip_actions) == (False, False)
    runner = SingleAgentEnvRunner(config=cfg)  # and sampling still hands the env its actions
    try:
        episodes = runner.sample(num_timesteps=64, random_actions=False)
    finally:
        runner.stop()
    actions = [int(a) for episode in episodes for a in episode.get_actions()]
    assert sum(len(episode) for episode in episodes) >= 64 and set(actions) <= {0, 1}
