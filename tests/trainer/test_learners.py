"""The on-policy presets' Learners: RLlib's, with Adam fused (``trainer/learners.py``). Breaks when
``algo_config`` stops choosing them or the optimizer is built without ``fused=True``."""

import gymnasium as gym
import pytest
import torch

from trainer import learners, presets


class Plan:
    seed = None
    atari = False

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm


@pytest.mark.parametrize("algorithm", ["PPO", "IMPALA", "APPO"])
def test_the_on_policy_presets_learn_with_fused_adam(algorithm):
    from trainer.configure import algo_config

    settings = {**presets.preset(algorithm, "CartPole-v1", atari=False), "num_learners": 0}
    config = algo_config(Plan(algorithm), settings, "CartPole-v1", {})
    assert config.learner_class is learners.LEARNER_CLASSES[algorithm]
    learner = config.build_learner(env=gym.make("CartPole-v1"))
    optimizer = learner.get_optimizer()
    assert isinstance(optimizer, torch.optim.Adam)
    assert [g["fused"] for g in optimizer.param_groups] == [True]
    # the preset's learning rate reaches it through RLlib's scheduler, as before
    first = settings["lr"][0][1] if isinstance(settings["lr"], list) else settings["lr"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(first)


def test_sac_and_dqn_keep_rllibs_learners():
    from trainer.configure import algo_config

    for algorithm, env_id in (("SAC", "Pendulum-v1"), ("DQN", "CartPole-v1")):
        config = algo_config(Plan(algorithm), presets.preset(algorithm, env_id, atari=False), env_id, {})
        assert config.learner_class is config.get_default_learner_class()


def test_a_default_adam_state_restores_into_the_fused_one():
    """A checkpoint saved before: torch's default Adam state loads and steps on."""
    torch.manual_seed(0)
    old_params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    new_params = [torch.nn.Parameter(p.detach().clone()) for p in old_params]
    old = torch.optim.Adam(old_params, lr=1e-3)
    for p in old_params:
        p.grad = torch.ones_like(p)
    old.step()
    fused = torch.optim.Adam(new_params, lr=1e-3, fused=True)
    fused.load_state_dict(old.state_dict())
    for p in new_params:
        p.grad = torch.ones_like(p)
    fused.step()
    assert all(torch.isfinite(p).all() for p in new_params)


def _impala_learner():
    from trainer.configure import algo_config

    settings = {**presets.preset("IMPALA", "CartPole-v1", atari=False), "num_learners": 0}
    config = algo_config(Plan("IMPALA"), settings, "CartPole-v1", {})
    return config.build_learner(env=gym.make("CartPole-v1"))


def _grads(learner):
    """One gradient per parameter, as ``compute_gradients`` returns them (the tensors are the
    parameters' ``.grad``)."""
    torch.manual_seed(1)
    grads = {}
    for pid, param in learner._params.items():
        param.grad = torch.randn_like(param)
        grads[pid] = param.grad
    return grads


def _params(learner):
    return [p.detach().clone() for p in learner._params.values()]


def test_finite_gradients_take_one_check_and_the_step_rllib_takes(monkeypatch):
    """Breaks when apply_gradients asks each tensor again (RLlib's two isfinite passes) or steps
    differently from RLlib's method."""
    from ray.rllib.core.learner.torch.torch_learner import TorchLearner

    ours, theirs = _impala_learner(), _impala_learner()
    theirs.module.set_state(ours.module.get_state())
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: calls.append(x.numel()) or real(x))
    ours.apply_gradients(_grads(ours))
    assert len(calls) == 1  # the total norm, one element
    monkeypatch.setattr(torch, "isfinite", real)
    TorchLearner.apply_gradients(theirs, _grads(theirs))
    for a, b in zip(_params(ours), _params(theirs), strict=True):
        assert torch.equal(a, b)


def test_a_nan_gradient_is_zeroed_as_rllib_does():
    """Breaks when the fast path steps on gradients it has not checked: Adam turns the nan into
    nan parameters, where RLlib's method zeroes the gradient and warns."""
    learner = _impala_learner()
    before = _params(learner)
    grads = _grads(learner)
    first = next(iter(grads))
    grads[first][(0,) * grads[first].dim()] = float("nan")
    learner.apply_gradients(grads)
    after = _params(learner)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
