"""The on-policy presets' Learners: RLlib's, with Adam fused (``trainer/learners.py``). Breaks when
``algo_config`` stops choosing them or the optimizer is built without ``fused=True``."""

import gymnasium as gym
import pytest
import torch

from tests.support.plans import PlanStub
from trainer import learners, presets


@pytest.mark.parametrize("algorithm", ["PPO", "IMPALA", "APPO"])
def test_the_on_policy_presets_learn_with_fused_adam(algorithm):
    from trainer.configure import algo_config

    settings = {**presets.preset(algorithm, "CartPole-v1", atari=False), "num_learners": 0}
    config = algo_config(PlanStub(algorithm), settings, "CartPole-v1", {})
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
        config = algo_config(
            PlanStub(algorithm, discrete_actions=env_id.startswith("CartPole")),
            presets.preset(algorithm, env_id, atari=False),
            env_id,
            {},
        )
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
    config = algo_config(PlanStub("IMPALA"), settings, "CartPole-v1", {})
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


@pytest.mark.parametrize("norm_before", [0.2, 50.0])  # below the clip (0.5), and above it
def test_the_clip_by_global_norm_is_rllibs(norm_before):
    """Breaks when the foreach clip scales the gradients or reports the norm differently from
    RLlib's ``clip_gradients``."""
    from ray.rllib.utils.torch_utils import clip_gradients

    learner = _impala_learner()
    grads = _grads(learner)
    scale = norm_before / float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads.values()])))
    ours = {pid: g * scale for pid, g in grads.items()}
    theirs = {pid: g.clone() for pid, g in ours.items()}
    norm = learner._get_clip_function()(ours, grad_clip=0.5, grad_clip_by="global_norm")
    expected = clip_gradients(theirs, grad_clip=0.5, grad_clip_by="global_norm")
    assert float(norm) == pytest.approx(float(expected), rel=1e-5) == pytest.approx(norm_before, rel=1e-4)
    for pid in ours:
        torch.testing.assert_close(ours[pid], theirs[pid], rtol=1e-5, atol=1e-8)
    total = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in ours.values()])))
    assert total == pytest.approx(min(0.5, norm_before), rel=1e-4)


def test_gradients_the_clip_found_finite_are_not_checked_again(monkeypatch):
    """One norm per update: the clip's. Counts the norms computed. Breaks when apply_gradients
    computes its own again after a finite clip, or trusts gradients the clip has not seen (here:
    other tensors than the clipped ones, and a nan among them)."""
    learner = _impala_learner()
    norms = []
    real = learners.get_total_norm
    monkeypatch.setattr(learners, "get_total_norm", lambda grads: norms.append(len(grads)) or real(grads))
    grads = _grads(learner)
    learner._get_clip_function()(grads, grad_clip=0.5, grad_clip_by="global_norm")
    learner.apply_gradients(grads)
    assert len(norms) == 1
    unseen = {pid: g.clone() for pid, g in _grads(learner).items()}
    first = next(iter(unseen))
    unseen[first][(0,) * unseen[first].dim()] = float("nan")
    learner._get_clip_function()(grads, grad_clip=0.5, grad_clip_by="global_norm")  # the old tensors
    learner.apply_gradients(unseen)
    assert len(norms) == 3  # the clip's, and apply_gradients' own check of the unseen tensors
    assert all(torch.isfinite(p).all() for p in _params(learner))


def test_a_non_finite_gradient_takes_rllibs_clip():
    """Breaks when the foreach clip scales an inf gradient itself instead of leaving it to RLlib's
    method (which caps the norm at 1e9), or marks it finite."""
    learner = _impala_learner()
    grads = _grads(learner)
    first = next(iter(grads))
    grads[first][(0,) * grads[first].dim()] = float("inf")
    norm = learner._get_clip_function()(grads, grad_clip=0.5, grad_clip_by="global_norm")
    assert float(norm) == pytest.approx(1e9)  # RLlib's compute_global_norm: nan_to_num(posinf=10e8)
    assert not learner._finite_grads
    learner.apply_gradients(grads)
    assert all(torch.isfinite(p).all() for p in _params(learner))
