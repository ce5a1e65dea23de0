"""Both sides of the trainer contract agree: rlq's (shared/contracts/trainer.py) and the trainer's own.

``trainer/`` is shipped alone (an Azure ML snapshot, a Ray working dir) and imports nothing from
``shared/``, so it keeps its own copy of the markers, the algorithm names and the argv flags.
"""

from __future__ import annotations

import json

import pytest

from shared.contracts.catalog import ALGORITHMS
from shared.contracts.parsing import parse_request
from shared.contracts.trainer import (
    ARGV_ENV,
    CHECKPOINT_FREQ,
    ENTRYPOINT,
    METRICS_MARK,
    MODEL_EVAL_SEED,
    SUMMARY_MARK,
    build_argv,
    seed_cluster_config,
)
from trainer import config_map, evaluate, metrics
from trainer import train as trainer


def test_log_markers_are_the_same_on_both_sides() -> None:
    assert metrics.METRICS_MARK == METRICS_MARK
    assert metrics.SUMMARY_MARK == SUMMARY_MARK


def test_the_model_comparisons_seeds_are_the_same_on_both_sides() -> None:
    assert evaluate.MODEL_EVAL_SEED == MODEL_EVAL_SEED


def test_the_trainer_reads_back_the_model_comparisons_flags(monkeypatch) -> None:
    request = parse_request(
        {
            "env": "CartPole-v1",
            "stop": {"training_iteration": 1},
            "eval_episodes": 7,
            "champion": {"version": 3, "checkpoint_path": "file:///ckpt/champion"},
        },
        default_id="contract-m",
    )
    monkeypatch.setenv(ARGV_ENV, json.dumps(build_argv(request, output_dir="/o", champion="/ckpt/champion")))
    args = trainer.parse_args(["--argv-from-env", ARGV_ENV])
    assert (args.model_eval_episodes, args.champion, args.champion_version) == ("7", "/ckpt/champion", "3")


def test_algorithms_are_listed_alike() -> None:
    assert tuple(config_map.ALGORITHMS) == tuple(ALGORITHMS)


def test_checkpoint_frequency_default_agrees() -> None:
    assert trainer.build_parser().parse_args([]).checkpoint_freq == str(CHECKPOINT_FREQ)


@pytest.mark.parametrize("ray_address", [None, "localhost:6379"])
def test_the_trainer_reads_back_every_flag_build_argv_writes(monkeypatch, ray_address) -> None:
    request = parse_request(
        {
            "env": "CartPole-v1",
            "algorithm": "PPO",
            "config": {"lr": 0.001, "model": {"fcnet_hiddens": [64, 64]}},
            "stop": {"episode_reward_mean": 400, "time_total_s": 900},
            "evaluate": {"episodes": 3, "gif": True},
        },
        default_id="contract-1",
    )
    argv = build_argv(
        request, output_dir="/out/c1", time_budget_s=600, restore="/ckpt/c0", ray_address=ray_address
    )
    monkeypatch.setenv(ARGV_ENV, json.dumps(argv))
    args = trainer.parse_args(["--argv-from-env", ARGV_ENV])
    assert args.run == "PPO" and args.env == "CartPole-v1"
    assert json.loads(args.config) == {"lr": 0.001, "model": {"fcnet_hiddens": [64, 64]}}
    assert json.loads(args.stop) == {"episode_reward_mean": 400, "time_total_s": 600}
    assert args.output_dir == "/out/c1" and args.restore == "/ckpt/c0"
    assert args.ray_address == ray_address
    assert args.checkpoint_freq == str(CHECKPOINT_FREQ)
    assert args.evaluate_episodes == "3" and args.evaluate_gif is True


def test_the_entrypoint_names_the_argv_variable_and_nothing_from_a_request() -> None:
    assert f"exec python -m trainer.train --argv-from-env {ARGV_ENV}" == ENTRYPOINT


def test_seed_cluster_config_fills_only_what_the_request_leaves_out() -> None:
    assert seed_cluster_config({}, total_cpus=12, head_gpus=1) == {
        "num_workers": 11,
        "num_gpus": 1,
    }
    own = {"num_env_runners": 3, "num_gpus_per_learner": 0, "lr": 0.1}
    assert seed_cluster_config(own, total_cpus=12, head_gpus=1) == own
    assert seed_cluster_config({}, total_cpus=0, head_gpus=0) == {
        "num_workers": 0,
        "num_gpus": 0,
    }


def test_env_config_and_the_catalogued_module_reach_the_trainer_and_only_when_set(monkeypatch) -> None:
    request = parse_request(
        {
            "env": "rlq_examples/Inventory-v0",
            "env_config": {"lead_time": 2},
            "stop": {"training_iteration": 1},
        },
        default_id="contract-2",
    )
    monkeypatch.setenv(ARGV_ENV, json.dumps(build_argv(request, output_dir="/o", env_module="rlq_inventory")))
    args = trainer.parse_args(["--argv-from-env", ARGV_ENV])
    assert json.loads(args.env_config) == {"lead_time": 2} and args.env_module == "rlq_inventory"
    plain = build_argv(parse_request({"env": "CartPole-v1"}, default_id="contract-3"), output_dir="/o")
    assert "--env-config" not in plain and "--env-module" not in plain
