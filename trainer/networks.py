"""The RLModules the image presets train: RLlib's own, with each full-frame convolution computed
as the one matrix product it is.

The Pong preset's last layer is a 11x11 "valid" convolution over an 11x11 input (RLlib's classic
Pong network): one output position, so it is a dense layer over the flattened input. torch on CPU
runs it as a convolution, and slowly: RLlib's CNN permutes its channels-last input, and oneDNN's
kernels for that layer in that layout took most of the network's time. Computed as the matrix
product it is, the preset's network ran 2.0x faster forward (16 frames, an EnvRunner's inference)
and 2.6x faster forward + backward (128 frames, a Learner's minibatch) on one thread, and the Pong
preset sampled 861-901 env steps/s while learning on a quiet machine where it had sampled 544-577
(``bench/trainer_throughput.py --only n`` and ``--only n,b,d``; docs/trainer.md). :class:`FullFrameConv2d`
computes that product when the kernel covers the whole input (no padding, stride 1) and is an
ordinary ``Conv2d`` otherwise; the parameters, their names and shapes are RLlib's, so checkpoints
and weights move between either class unchanged.

Ray and torch are imported at module level: :mod:`trainer.configure` imports this module only
inside ``algo_config``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from torch import nn


class FullFrameConv2d(nn.Conv2d):
    """A ``Conv2d`` that is a dense layer when its kernel covers the whole (unpadded) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # torch's own parameter name (an override)
        if (
            tuple(input.shape[-2:]) == self.kernel_size
            and self.padding == (0, 0)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
        ):
            # reshape reads the input in (channel, row, column) order whatever its memory layout,
            # the order of the weight's (in_channels, kh, kw) dimensions.
            flat = input.reshape(input.shape[0], -1)
            out = F.linear(flat, self.weight.reshape(self.out_channels, -1), self.bias)
            return out[:, :, None, None]
        return super().forward(input)


def use_full_frame_convs(module: nn.Module) -> int:
    """Make every plain ``Conv2d`` in ``module`` a :class:`FullFrameConv2d` in place (same
    parameter objects, so any optimizer built later sees them); return how many."""
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Conv2d:
            layer.__class__ = FullFrameConv2d
            count += 1
    return count


class _FullFrameConvs:
    def setup(self) -> None:
        super().setup()  # type: ignore[misc]  # the RLModule base this is mixed into
        assert isinstance(self, nn.Module)
        use_full_frame_convs(self)


class FullFramePPOTorchRLModule(_FullFrameConvs, DefaultPPOTorchRLModule):
    """RLlib's PPO module (PPO and IMPALA train it), full-frame convolutions as matrix products."""


class FullFrameAPPOTorchRLModule(_FullFrameConvs, DefaultAPPOTorchRLModule):
    """RLlib's APPO module, full-frame convolutions as matrix products."""


MODULE_CLASSES: dict[str, Any] = {
    "PPO": FullFramePPOTorchRLModule,
    "IMPALA": FullFramePPOTorchRLModule,
    "APPO": FullFrameAPPOTorchRLModule,
}
