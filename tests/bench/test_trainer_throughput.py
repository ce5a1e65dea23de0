"""The throughput limit (d) in bench/trainer_throughput.py takes the optimizer steps RLlib's
Learner takes: its minibatch plan is RLlib's own ``MiniBatchCyclicIterator`` cut of the batch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from trainer import presets

BENCH = Path(__file__).resolve().parents[2] / "bench" / "trainer_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("trainer_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rllib_cut(rows: int, minibatch_size: int | None, num_epochs: int) -> list[list[int]]:
    """The row indices of each minibatch RLlib's Learner trains on for one batch of ``rows``."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
    from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator

    batch = MultiAgentBatch({"default_policy": SampleBatch({"idx": np.arange(rows)})}, env_steps=rows)
    it = MiniBatchCyclicIterator(
        batch, num_epochs=num_epochs, minibatch_size=minibatch_size or rows, shuffle_batch_per_epoch=False
    )
    return [list(mb.policy_batches["default_policy"]["idx"]) for mb in it]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_epochs": 1}, {"num_epochs": 3}, {"minibatch_size": 96}, {"rollout_fragment_length": 50}],
)
def test_minibatch_plan_is_rllibs_cut(bench, overrides):
    settings = {**presets.preset("IMPALA", "PongNoFrameskip-v4", True), **overrides}
    # The Learner's batch: each env's fragment plus the bootstrap step the learner connector adds.
    rows = settings["num_envs_per_env_runner"] * (settings["rollout_fragment_length"] + 1)
    plan = [[i for a, b in parts for i in range(a, b)] for parts in bench.minibatch_plan(settings)]
    assert plan == _rllib_cut(rows, settings["minibatch_size"], settings["num_epochs"])


def test_pong_preset_takes_nine_optimizer_steps_per_batch(bench):
    """docs/trainer.md ("Minibatches, counted") and the preset's comment: 9 per 512 sampled steps."""
    settings = presets.preset("IMPALA", "PongNoFrameskip-v4", True)
    assert len(bench.minibatch_plan(settings)) == 9
    batch = settings["num_envs_per_env_runner"] * settings["rollout_fragment_length"]
    assert round(1e6 * 9 / batch) == 17_578


def test_the_network_measurement_compares_the_same_weights_both_ways(bench):
    """(n) times RLlib's Conv2d against the full-frame matrix product on one set of weights and
    asserts their outputs equal; a few repetitions suffice to see it runs."""
    settings = {**presets.preset("IMPALA", bench.ENV_ID, True), "num_env_runners": 1}
    from trainer import networks

    ms = bench.network(settings, reps=2)
    both = {f"{n}_{k}" for n in ("rllib", "rlq") for k in ("forward", "forward_backward")}
    assert set(ms) == both | ({"rlq_bf16_forward_backward"} if networks.native_bf16() else set())
    assert all(v > 0 for v in ms.values())


def test_the_optimizer_measurements_leave_equal_parameters(bench):
    """(o) times Adam both ways and RLlib's apply_gradients against the trainer's, each pair from
    the same start, and asserts the same parameters after; a few repetitions suffice to see it runs."""
    settings = {**presets.preset("IMPALA", bench.ENV_ID, True), "num_env_runners": 1}
    assert set(bench.optimizer(settings, reps=2)) >= {"default", "fused"}
    ms = bench.gradient_step(settings, reps=2)
    assert set(ms) == {"rllib", "trainer"}
    assert all(v > 0 for v in ms.values())


def test_the_limit_reads_the_presets_schedules_at_step_0(bench):
    """(d) takes lr and entropy_coeff as numbers; the Atari preset gives both as schedules
    (a schedule multiplied into (d)'s loss raised a TypeError there)."""
    settings = presets.preset("IMPALA", bench.ENV_ID, True)
    assert bench._first_value(settings["lr"]) == 0.0005
    assert bench._first_value(settings["entropy_coeff"]) == 0.01
    assert bench._first_value(0.003) == 0.003
