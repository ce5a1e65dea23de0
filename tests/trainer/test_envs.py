"""The Atari env creator: DeepMind-order preprocessing, the shapes the presets train on."""

import cv2
import numpy as np

from tests.support.plans import PlanStub
from trainer import envs, presets


def _inner(env, name):
    e = env
    while e is not None:
        if type(e).__name__ == name:
            return e
        e = getattr(e, "env", None)
    raise AssertionError(f"no {name} in the wrapper chain")


def test_pong_frames_are_the_resized_max_of_the_last_two_emulator_frames():
    env = envs.make_env({"env_id": "PongNoFrameskip-v4", "dim": 42, "framestack": 4})
    obs, _ = env.reset(seed=3)
    assert obs.shape == (42, 42, 4) and obs.dtype == np.float32
    ale = env.unwrapped.ale
    skip = _inner(env, "MaxAndSkipEnv")
    for _ in range(40):
        before = ale.getEpisodeFrameNumber()
        obs, *_ = env.step(env.action_space.sample())
        assert ale.getEpisodeFrameNumber() - before == 4  # action repeat 4
        raw = skip._obs_buffer  # the last two full-size grayscale emulator frames
        assert raw.shape == (2, 210, 160)
        expected = cv2.resize(raw.max(axis=0), (42, 42), interpolation=cv2.INTER_AREA) / 128.0 - 1.0
        np.testing.assert_allclose(obs[:, :, -1], expected, atol=1e-6)
    assert obs.min() >= -1.0 and obs.max() <= 1.0
    env.close()


def test_pong_preset_frame_size_reaches_the_env_config():
    settings = presets.preset("IMPALA", "PongNoFrameskip-v4", True)
    cfg = envs.env_config_for("PongNoFrameskip-v4", settings)
    assert cfg == {"env_id": "PongNoFrameskip-v4", "dim": 42, "framestack": 4}
    env = envs.make_env(cfg)
    assert env.observation_space.shape == (42, 42, 4)
    env.close()


# --- RLlib's vector entry point: ale_py's AtariVectorEnv (envs.make_vector_env) ----------------

FRAMES = {"env_id": "PongNoFrameskip-v4", "dim": 42, "framestack": 4, "noop_max": 1}


def test_the_vector_env_gives_the_one_env_frames():
    """The same game, seed and actions through both paths: the same spaces, the stack oldest frame
    first, and frames that agree with the one-env path's in scale and orientation. (The two
    resets differ: the one-env path's no-ops and FIRE are agent steps of 4 frames, ale_py's are
    single frames, so the games run a few frames apart and only Pong's slow opening is compared.)
    Breaks when the stack order, the channel axis or the scale of ``ScaledChannelsLast`` changes."""
    one = envs.make_env(FRAMES)
    vec = envs.make_vector_env({**FRAMES, "num_envs": 1})
    assert vec.single_observation_space == one.observation_space
    assert vec.observation_space.shape == (1, 42, 42, 4) and vec.num_envs == 1
    one.reset(seed=3)
    b, _ = vec.reset(seed=3)
    actions = np.random.default_rng(0).integers(0, 6, size=60)
    apart, before = [], b
    for i, action in enumerate(actions):
        a, *_ = one.step(int(action))
        b, *_ = vec.step(np.array([action]))
        assert b.dtype == np.float32 and b.min() >= -1.0 and b.max() <= 1.0
        np.testing.assert_array_equal(b[0, :, :, :-1], before[0, :, :, 1:])  # oldest first
        before = b
        if i >= 3:  # four agent steps: both stacks hold frames of the game, no reset frames
            apart.append(np.mean(np.abs(b[0] - a)))
    assert max(apart) < 0.01, max(apart)  # measured: 0.002 to 0.004 (one grey level is 0.0078)
    one.close()
    vec.close()


def test_the_vector_env_keeps_the_games_settings(monkeypatch):
    """Sticky actions as the id defines them (v5: 0.25, NoFrameskip-v4: 0) unless set, the game's
    own rewards (clipping is the algorithm's), episodic life and the frame options."""
    from ale_py import vector_env

    made = []

    class Recording(vector_env.AtariVectorEnv):
        def __init__(self, *args, **kwargs):
            made.append((args, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vector_env, "AtariVectorEnv", Recording)
    for cfg, sticky in (
        ({"env_id": "ALE/Pong-v5"}, 0.25),
        ({"env_id": "PongNoFrameskip-v4"}, 0.0),
        ({"env_id": "ALE/Pong-v5", "repeat_action_probability": 0.1}, 0.1),
    ):
        envs.make_vector_env({**cfg, "dim": 42, "num_envs": 2}).close()
        (game, num_envs), kwargs = made[-1]
        assert (game, num_envs, kwargs["repeat_action_probability"]) == ("pong", 2, sticky)
        assert kwargs["reward_clipping"] is False and kwargs["episodic_life"] is True
        assert (kwargs["img_height"], kwargs["stack_num"], kwargs["frameskip"]) == (42, 4, 4)
        assert kwargs["num_threads"] == 1


def test_the_vector_entry_point_steps_the_one_env_path_where_only_it_applies():
    """Not Atari, or Atari with an option only the one-env path has: ``make_env``'s envs, synced."""
    cartpole = envs.make_vector_env({"env_id": "CartPole-v1", "num_envs": 3})
    assert type(cartpole).__name__ == "SyncVectorEnv" and cartpole.num_envs == 3
    capped = envs.make_vector_env({**FRAMES, "max_episode_steps": 50, "num_envs": 2})
    assert type(capped).__name__ == "SyncVectorEnv"
    assert capped.envs[0]._max_episode_steps == 50
    for v in (cartpole, capped):
        v.close()


def test_an_atari_preset_samples_through_the_vector_env():
    """The trainer's own config: an Atari preset's EnvRunner steps one ``AtariVectorEnv``, a
    vector preset's keeps RLlib's synced envs. Breaks when ``algo_config`` stops asking RLlib
    for the vector entry point."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from trainer.configure import algo_config

    for env_id, atari, kind in (("PongNoFrameskip-v4", True, "AtariVectorEnv"), ("CartPole-v1", False, "")):
        settings = {**presets.preset("IMPALA", env_id, atari=atari), "num_env_runners": 0}
        config = algo_config(
            PlanStub("IMPALA", atari=atari, seed=0),
            settings,
            envs.register(env_id),
            envs.env_config_for(env_id, settings),
        )
        runner = SingleAgentEnvRunner(config=config)
        try:
            chain, e = [], runner.env
            while e is not None:
                chain.append(type(e).__name__)
                e = getattr(e, "env", None)
            assert (kind in chain) == atari, chain
            episodes = runner.sample(num_timesteps=64, random_actions=True)
            assert sum(len(ep) for ep in episodes) >= 64
        finally:
            runner.stop()
