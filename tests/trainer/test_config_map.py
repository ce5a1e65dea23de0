"""Pure-function tests of the config / stop mapping (no Ray)."""

import pytest

from trainer import config_map, presets
from trainer.config_map import UsageError, check_stop, default_num_env_runners, map_config, map_stop


def test_article_names_map_to_todays_names_with_one_note_each():
    m = map_config(
        {
            "num_workers": 13,
            "num_envs_per_worker": 5,
            "sample_batch_size": 50,
            "train_batch_size": 1000,
            "num_sgd_iter": 2,
            "lr": 0.0005,
        },
        "IMPALA",
    )
    assert m.settings == {
        "num_env_runners": 13,
        "num_envs_per_env_runner": 5,
        "rollout_fragment_length": 50,
        "train_batch_size_per_learner": 1000,
        "num_epochs": 2,
        "lr": 0.0005,
    }
    assert len(m.notes) == 5  # lr is today's name: no note
    assert any("num_workers=13 -> num_env_runners=13" in n for n in m.notes)
    assert any("sample_batch_size=50 -> rollout_fragment_length=50" in n for n in m.notes)


def test_num_gpus_maps_to_learner_gpus():
    assert map_config({"num_gpus": 1}, "IMPALA").settings == {"num_gpus_per_learner": 1.0}
    assert map_config({"num_gpus": 0}, "IMPALA").settings == {"num_gpus_per_learner": 0.0}
    assert map_config({"num_gpus": 4}, "PPO").settings == {"num_learners": 4, "num_gpus_per_learner": 1.0}
    with pytest.raises(UsageError):
        map_config({"num_gpus": 2.5}, "PPO")


def test_model_dim_goes_to_env_creator_and_fcnet_to_model_config():
    m = map_config({"model": {"dim": 42, "fcnet_hiddens": [32, 32], "post_fcnet_hiddens": [64]}}, "APPO")
    assert m.settings == {"dim": 42, "fcnet_hiddens": [32, 32], "head_fcnet_hiddens": [64]}
    assert config_map.SETTINGS["dim"][0] == "env"
    assert config_map.SETTINGS["fcnet_hiddens"][0] == "model"
    assert len(m.notes) == 3


def test_ignored_names_log_why():
    m = map_config({"num_data_loader_buffers": 2, "opt_type": "rmsprop"}, "IMPALA")
    assert m.settings == {}
    assert len(m.notes) == 2
    assert all("ignored:" in n for n in m.notes)
    assert "num_data_loader_buffers=2 ignored: old API stack" in m.notes[0]


def test_seed_article_config_is_accepted():
    m = map_config(
        {
            "num_gpus": 1,
            "num_workers": 13,
            "sample_batch_size": 50,
            "train_batch_size": 1000,
            "num_sgd_iter": 2,
            "num_data_loader_buffers": 2,
            "model": {"dim": 42},
        },
        "IMPALA",
    )
    assert m.settings["num_env_runners"] == 13 and m.settings["dim"] == 42
    assert m.settings["num_epochs"] == 2


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"no_such_key": 1}, "--config.no_such_key"),
        ({"num_workers": -3}, "--config.num_workers"),
        ({"num_workers": 5000}, "--config.num_workers"),
        ({"num_workers": "4"}, "--config.num_workers"),
        ({"num_workers": True}, "--config.num_workers"),
        ({"lr": "fast"}, "--config.lr"),
        ({"gamma": 1.5}, "--config.gamma"),
        ({"model": {"dim": 42, "bogus": 1}}, "--config.model.bogus"),
        ({"model": [1]}, "--config.model"),
        ({"clip_param": 0.3}, "--config.clip_param"),  # not an IMPALA setting
        ({"conv_filters": [[16, [4, 4], 2, "full"]]}, "--config.conv_filters"),
        ({"conv_filters": [[16, [4, 4], 2, "valid", 1]]}, "--config.conv_filters"),
        ({"learner_precision": "float16"}, "--config.learner_precision"),
    ],
)
def test_bad_values_name_the_field(cfg, field):
    with pytest.raises(UsageError) as ei:
        map_config(cfg, "IMPALA")
    assert str(ei.value).startswith(field + ":")
    assert "expected" in str(ei.value)


def test_conv_filters_take_an_optional_padding():
    m = map_config(
        {"conv_filters": [[16, 4, 2], [256, [11, 11], 1, "valid"], [8, [3, 3], 1, "same"]]}, "IMPALA"
    )
    assert m.settings["conv_filters"] == [
        [16, [4, 4], 2],
        [256, [11, 11], 1, "valid"],
        [8, [3, 3], 1, "same"],
    ]


def test_learner_precision_names_its_values_and_its_algorithms():
    assert map_config({"learner_precision": "bfloat16"}, "IMPALA").settings == {
        "learner_precision": "bfloat16"
    }
    with pytest.raises(UsageError, match='expected one of "auto", "float32", "bfloat16"'):
        map_config({"learner_precision": "half"}, "PPO")
    with pytest.raises(UsageError, match=r"--config.learner_precision: .* does not apply to SAC"):
        map_config({"learner_precision": "auto"}, "SAC")


def test_unknown_key_error_names_it():
    with pytest.raises(UsageError, match=r"--config.foo: 1 is not allowed"):
        map_config({"foo": 1}, "PPO")


def test_num_workers_default_from_cpu_count():
    assert default_num_env_runners(14) == 13  # the article's NC6 head + 4 x D2_v2
    assert default_num_env_runners(2) == 1
    assert default_num_env_runners(1) == 1
    assert default_num_env_runners(0) == 1


def test_stop_names_old_and_new():
    assert map_stop({"episode_reward_mean": 18, "time_total_s": 3600, "timesteps_total": 1000}) == {
        "episode_reward_mean": 18.0,
        "time_total_s": 3600.0,
        "timesteps": 1000,
    }
    assert map_stop(
        {"env_runners/episode_return_mean": 450, "num_env_steps_sampled_lifetime": 5, "training_iteration": 3}
    ) == {"episode_reward_mean": 450.0, "timesteps": 5, "training_iteration": 3}
    with pytest.raises(UsageError, match=r"--stop.reward: "):
        map_stop({"reward": 3})
    with pytest.raises(UsageError, match=r"--stop.time_total_s"):
        map_stop({"time_total_s": "soon"})


def test_check_stop_reasons():
    stop = map_stop(
        {"episode_reward_mean": 18, "time_total_s": 100, "timesteps_total": 1000, "training_iteration": 50}
    )
    row = {"iteration": 1, "time_total_s": 1.0, "timesteps": 10, "episode_reward_mean": None}
    assert check_stop(stop, row) is None
    assert check_stop(stop, {**row, "episode_reward_mean": 18.0}) == "reward_reached"
    assert check_stop(stop, {**row, "time_total_s": 100.5}) == "time_limit"
    assert check_stop(stop, {**row, "timesteps": 1000}) == "timesteps_limit"
    assert check_stop(stop, {**row, "iteration": 50}) == "iterations_limit"


def test_presets_are_valid_settings_and_user_config_overrides():
    for algo in config_map.ALGORITHMS:
        for env, atari in (("CartPole-v1", False), ("PongNoFrameskip-v4", True)):
            p = presets.preset(algo, env, atari)
            for key, value in p.items():
                _method, kind, algos = config_map.SETTINGS[key]
                assert algos is None or algo in algos, (algo, key)
                kind(key, value)  # raises if the preset value is out of range
    p = presets.preset("IMPALA", "PongNoFrameskip-v4", True, num_gpus=1)
    assert p["num_gpus_per_learner"] == 1.0
    assert "num_env_runners" not in p  # seed rule decides at run time
