"""trainer/presets.py: the presets stay valid RLlib configs whatever a request overrides."""

from __future__ import annotations

import pytest

from trainer import config_map, presets


def _merged(algorithm: str, env_id: str, atari: bool, user: dict, gpus: float = 0.0):
    preset = presets.preset(algorithm, env_id, atari, gpus)
    overrides = config_map.map_config(user, algorithm).settings
    settings = {**preset, **overrides}
    note = presets.fit_minibatch(algorithm, preset, settings, overrides)
    return settings, note


def test_the_seeds_batch_sizes_refit_the_pong_minibatches_to_whole_fragments():
    # The article's request: sample_batch_size 50, train_batch_size 500 (old names).
    settings, note = _merged(
        "IMPALA", "PongNoFrameskip-v4", True, {"sample_batch_size": 50, "train_batch_size": 500}
    )
    assert settings["rollout_fragment_length"] == 50
    assert settings["minibatch_size"] == 100  # 4 minibatches per batch, as the preset's 512/128
    assert settings["minibatch_size"] % 50 == 0
    assert (
        note
        == "minibatch_size=128 (preset) -> 100: 4 minibatches per 500-step batch in whole 50-step fragments"
    )


def test_a_batch_of_one_fragment_trains_it_whole():
    settings, note = _merged(
        "IMPALA", "PongNoFrameskip-v4", True, {"sample_batch_size": 20, "train_batch_size": 20}
    )
    assert "minibatch_size" not in settings
    assert "dropped" in note


def test_a_smaller_cartpole_batch_is_trained_whole_as_the_preset_trains_its_own():
    # The CartPole IMPALA preset's minibatch is its whole 256-step batch: one update per pass.
    settings, note = _merged("IMPALA", "CartPole-v1", False, {"train_batch_size": 128})
    assert "minibatch_size" not in settings
    assert note == "minibatch_size=256 (preset) dropped: one update per pass over the 128-step batch"


@pytest.mark.parametrize(
    ("algorithm", "env_id", "atari", "user"),
    [
        ("IMPALA", "PongNoFrameskip-v4", True, {}),
        ("IMPALA", "PongNoFrameskip-v4", True, {"minibatch_size": 64}),
        ("IMPALA", "PongNoFrameskip-v4", True, {"lr": 0.001}),
        ("PPO", "PongNoFrameskip-v4", True, {"train_batch_size": 4096}),
    ],
)
def test_requests_that_keep_the_preset_valid_or_name_the_minibatch_are_left_alone(
    algorithm, env_id, atari, user
):
    settings, note = _merged(algorithm, env_id, atari, user)
    expected = user.get("minibatch_size", presets.preset(algorithm, env_id, atari).get("minibatch_size"))
    assert note is None
    assert settings.get("minibatch_size") == expected


def test_ppo_keeps_only_the_batch_bound():
    settings, note = _merged("PPO", "PongNoFrameskip-v4", True, {"train_batch_size": 100})
    assert settings["minibatch_size"] == 100 // 31  # 4000/128 = 31 minibatches per batch
    assert "in whole" not in note


def test_every_refitted_pong_config_is_accepted_by_rllib():
    from ray.rllib.algorithms.impala import IMPALAConfig

    for frag, batch in ((50, 500), (20, 40), (32, 96), (25, 1000)):
        settings, _ = _merged(
            "IMPALA", "PongNoFrameskip-v4", True, {"sample_batch_size": frag, "train_batch_size": batch}
        )
        cfg = (
            IMPALAConfig()
            .env_runners(rollout_fragment_length=frag, num_envs_per_env_runner=1)
            .training(train_batch_size_per_learner=batch, minibatch_size=settings.get("minibatch_size"))
        )
        cfg.validate()  # raises on a minibatch that is not whole fragments or is larger than the batch


@pytest.mark.parametrize(
    ("user", "fitted"),
    [
        ({"train_batch_size": 1000, "num_env_runners": 2}, True),  # rounds of 2 x 64 x 16 = 2048
        ({"train_batch_size": 300}, True),  # one round of 64 x 16 = 1024 steps
        ({"num_env_runners": 3}, True),  # 3072 steps per round against the preset's 1024
        ({"train_batch_size": 4000}, False),  # 4 rounds of 1024: 96 steps (2.4 %) over, as RLlib allows
        ({"num_envs_per_env_runner": 4, "train_batch_size": 4000}, False),
    ],
)
def test_a_ppo_batch_the_presets_sampling_rounds_cannot_fill_gets_rllibs_auto_fragment(user, fitted):
    """RLlib's PPO refuses a batch more than 10 % from whole sampling rounds; the trainer turns the
    preset's fragment into "auto" exactly then, and RLlib's own validation accepts every result.
    Breaks when fit_fragment is not applied (RLlib raises) or applied where the preset fits (the
    fragment changes)."""
    from tests.support.plans import PlanStub
    from trainer.configure import algo_config

    settings, _ = _merged("PPO", "CartPole-v1", False, user)
    settings.setdefault("num_env_runners", 0)
    note = presets.fit_fragment("PPO", settings, config_map.map_config(user, "PPO").settings)
    assert (settings["rollout_fragment_length"] == "auto") is fitted
    assert (note is not None) is fitted
    if fitted:
        assert note.startswith("rollout_fragment_length=16 (preset) -> auto: ")
    algo_config(PlanStub("PPO"), settings, "CartPole-v1", {}).validate()


def test_a_fragment_the_request_names_is_left_to_rllibs_own_check():
    user = {"train_batch_size": 1000, "rollout_fragment_length": 50}
    settings, _ = _merged("PPO", "CartPole-v1", False, user)
    overrides = config_map.map_config(user, "PPO").settings
    assert (
        presets.fit_fragment("PPO", settings, overrides) is None and settings["rollout_fragment_length"] == 50
    )
