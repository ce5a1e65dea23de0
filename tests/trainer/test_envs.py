"""The Atari env creator: DeepMind-order preprocessing, the shapes the presets train on."""

import cv2
import numpy as np

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
