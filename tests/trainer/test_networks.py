"""The image presets' networks: a full-frame convolution computed as a matrix product gives the
convolution's outputs and gradients, and the Pong preset's module (learner and EnvRunners) uses it.

Mutations that fail here: ``FullFrameConv2d.forward`` flattening the input in (row, column,
channel) order, or taking the dense path with padding or stride; ``algo_config`` no longer setting
``networks.MODULE_CLASSES`` as the module class for image presets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.support.plans import PlanStub
from trainer import networks, presets


def _twins(in_ch: int, out_ch: int, kernel: int, **kw) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(in_ch, out_ch, kernel, **kw)
    fast = copy.deepcopy(plain)
    assert networks.use_full_frame_convs(fast) == 1
    return plain, fast


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_full_frame_convolution_is_the_same_function_and_gradient(layout):
    plain, fast = _twins(32, 256, 11)
    # RLlib's CNN permutes its (B, H, W, C) input: the channels-last layout the preset sees.
    x = (
        torch.randn(6, 11, 11, 32).permute(0, 3, 1, 2)
        if layout == "channels_last"
        else torch.randn(6, 32, 11, 11)
    )
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), fast(xb)
    assert yb.shape == ya.shape == (6, 256, 1, 1)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    (ya * torch.arange(256.0)[:, None, None]).sum().backward()
    (yb * torch.arange(256.0)[:, None, None]).sum().backward()
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kernel", "kw", "size"),
    [(4, {"stride": 2}, 4), (3, {"padding": 1}, 3), (3, {}, 5)],
    ids=["strided", "padded", "smaller-kernel"],
)
def test_any_other_convolution_stays_a_convolution(kernel, kw, size):
    plain, fast = _twins(4, 8, kernel, **kw)
    x = torch.randn(3, 4, size, size)
    torch.testing.assert_close(fast(x), plain(x))
    assert fast(x).shape == plain(x).shape


def test_the_pong_preset_trains_and_samples_with_full_frame_convolutions():
    from trainer import envs
    from trainer.configure import algo_config

    env_id = "PongNoFrameskip-v4"
    settings = {**presets.preset("IMPALA", env_id, atari=True), "num_env_runners": 1}
    env_config = envs.env_config_for(env_id, settings)
    config = algo_config(PlanStub("IMPALA", atari=True), settings, envs.register(env_id), env_config)
    probe = envs.make_env(env_config)
    try:
        for inference_only in (False, True):  # the Learner's module, then an EnvRunner's
            module = config.get_rl_module_spec(env=probe, inference_only=inference_only).build()
            assert isinstance(module, networks.FullFramePPOTorchRLModule)
            kinds = [type(m).__name__ for m in module.modules() if isinstance(m, nn.Conv2d)]
            assert kinds == ["FullFrameConv2d"] * 3
    finally:
        probe.close()


def test_vector_presets_keep_rllibs_module():
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    from trainer.configure import algo_config

    config = algo_config(
        PlanStub("PPO"), presets.preset("PPO", "CartPole-v1", atari=False), "CartPole-v1", {}
    )
    assert config.rl_module_spec.module_class is DefaultPPOTorchRLModule


def _pong_module(precision: str):
    from trainer import envs
    from trainer.configure import algo_config

    env_id = "PongNoFrameskip-v4"
    settings = {**presets.preset("IMPALA", env_id, atari=True), "learner_precision": precision}
    env_config = envs.env_config_for(env_id, settings)
    config = algo_config(PlanStub("IMPALA", atari=True), settings, envs.register(env_id), env_config)
    probe = envs.make_env(env_config)
    try:
        return config.get_rl_module_spec(env=probe).build(), probe.observation_space
    finally:
        probe.close()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_learner_forward_in_bfloat16_is_float32_forward_within_bfloat16s_precision(precision):
    """The convolutions in bfloat16 under "bfloat16", the outputs float32 and within bfloat16's
    precision of the float32 forward, every parameter's gradient float32 and finite. Mutations:
    the outputs left in bfloat16 (the dtype assertion fails); the autocast left out (the
    convolutions' dtype assertion fails)."""
    from ray.rllib.core.columns import Columns

    torch.manual_seed(0)
    module, space = _pong_module(precision)
    reference, _ = _pong_module("float32")
    reference.load_state_dict(module.state_dict())
    batch = {Columns.OBS: torch.rand(64, *space.shape) * 2 - 1}
    conv_dtypes: list[torch.dtype] = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer.register_forward_hook(lambda _m, _i, out: conv_dtypes.append(out.dtype))
    out = module.forward_train(batch)
    expected = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert conv_dtypes == [expected] * 3
    ref = reference.forward_train(batch)
    for key in (Columns.ACTION_DIST_INPUTS, Columns.EMBEDDINGS):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], ref[key], atol=0.05, rtol=0.05)
    conv_dtypes.clear()
    module.forward_exploration(batch)  # sampling stays float32 on every CPU
    assert conv_dtypes == [torch.float32] * 3
    values = module.compute_values(batch, embeddings=out[Columns.EMBEDDINGS])
    (out[Columns.ACTION_DIST_INPUTS].square().mean() + values.square().mean()).backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def test_learner_precision_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(networks, "native_bf16", lambda: True)
    assert (
        networks.train_bf16("auto") and networks.train_bf16("bfloat16") and not networks.train_bf16("float32")
    )
    monkeypatch.setattr(networks, "native_bf16", lambda: False)
    assert not networks.train_bf16("auto") and networks.train_bf16("bfloat16")
