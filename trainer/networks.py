"""The RLModules the image presets train: RLlib's own, with each full-frame convolution computed
as the one matrix product it is, and the Learner's encoder in bfloat16 where the CPU has it.

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

On a CPU with native bfloat16 (AMX or AVX512-BF16), the Learner's forward pass through the
encoder (the convolutions and the layer after them: nearly all of a minibatch's arithmetic) runs
under ``torch.autocast`` in bfloat16 when ``model_config["learner_precision"]`` is "bfloat16",
or "auto" and the CPU has it (:func:`native_bf16`). Its output goes on in float32: the policy and
value heads, the loss (V-trace, log-probabilities) and the optimizer stay in float32, and so do
the weights, so checkpoints are unchanged and sampling (``_forward``, the EnvRunner's inference)
is float32 on every CPU. V-trace's importance weights correct the small gap between the
float32 policy that sampled and the bfloat16 forward that learns.

Ray and torch are imported at module level: :mod:`trainer.configure` imports this module only
inside ``algo_config``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ACTOR, CRITIC, ENCODER_OUT
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


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16); without it oneDNN
    emulates bfloat16 and a forward pass in it is slower than in float32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, private (2.13)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def train_bf16(precision: str) -> bool:
    """Whether the Learner's encoder runs in bfloat16 for ``learner_precision`` on this CPU."""
    return precision == "bfloat16" or (precision == "auto" and native_bf16())


class _FullFrameConvs:
    def setup(self) -> None:
        super().setup()  # type: ignore[misc]  # the RLModule base this is mixed into
        assert isinstance(self, nn.Module)
        use_full_frame_convs(self)
        config: Any = getattr(self, "model_config", None)  # a dict: configure passes one
        precision = config.get("learner_precision", "float32") if isinstance(config, dict) else "float32"
        self._train_bf16 = train_bf16(precision)

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        if not self._train_bf16 or obs.device.type != "cpu" or self.is_stateful():  # type: ignore[attr-defined]
            return super()._forward_train(batch, **kwargs)  # type: ignore[misc]
        # RLlib's own body (DefaultPPOTorchRLModule, Ray 2.60) with the encoder in bfloat16.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder_out = self.encoder(batch)[ENCODER_OUT]  # type: ignore[attr-defined]
        return {
            Columns.EMBEDDINGS: encoder_out[CRITIC].float(),
            Columns.ACTION_DIST_INPUTS: self.pi(encoder_out[ACTOR].float()),  # type: ignore[attr-defined]
        }


class FullFramePPOTorchRLModule(_FullFrameConvs, DefaultPPOTorchRLModule):
    """RLlib's PPO module (PPO and IMPALA train it), full-frame convolutions as matrix products,
    the Learner's encoder in bfloat16 per ``learner_precision``."""


class FullFrameAPPOTorchRLModule(_FullFrameConvs, DefaultAPPOTorchRLModule):
    """RLlib's APPO module, full-frame convolutions as matrix products, the Learner's encoder in
    bfloat16 per ``learner_precision``."""


MODULE_CLASSES: dict[str, Any] = {
    "PPO": FullFramePPOTorchRLModule,
    "IMPALA": FullFramePPOTorchRLModule,
    "APPO": FullFrameAPPOTorchRLModule,
}
