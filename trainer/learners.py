"""The Learners the on-policy presets train with: RLlib's own, with Adam's fused kernel, the
gradient clip by global norm in torch's foreach kernels, and one finiteness check per update.

RLlib's ``TorchLearner.configure_optimizers_for_module`` builds ``torch.optim.Adam(params)``
with torch's default implementation, which on CPU updates one parameter tensor after another.
``fused=True`` is the same algorithm in one kernel over all of them, and the per-tensor overhead
it saves weighs most on small networks: ``bench/trainer_throughput.py --only o`` times an Adam
step of the Pong preset's module both ways (one thread) and asserts the same parameters after 200
steps; docs/trainer.md has the figures. Everything else is RLlib's: the learning-rate schedule
drives the same optimizer through its param groups, and the optimizer state keeps its keys, so a
checkpoint saved before this restores into it (and trains on in torch's default implementation,
whose flags the saved param groups carry).

RLlib's ``TorchLearner.apply_gradients`` asks every gradient tensor twice whether it is finite
(``torch.isfinite(grad).all()`` per tensor, then again over the optimizer's param groups before
``step()``): 13 % of the Pong preset's learner thread in py-spy (docs/trainer.md, "The sixth
change"). One total norm over the gradients answers the same question in one pass: it is finite
exactly when every gradient is (finite gradients whose norm overflows to inf take RLlib's path
too, which then finds them finite). When the gradients were clipped by global norm (RLlib's
default way, for a preset's grad_clip), the clip's norm already answered it: finite before the
clip is finite after it, so apply_gradients checks only tensors the clip did not see. Anything
else -- a non-finite gradient, a grad scaler, torch lr schedulers -- goes to RLlib's own method,
which zeroes the nan/inf entries and warns.

Ray and torch are imported at module level: :mod:`trainer.configure` imports this module only
inside ``algo_config``.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.impala.torch.impala_torch_learner import IMPALATorchLearner
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.utils.torch_utils import clip_gradients
from torch.nn.utils import get_total_norm


class _FusedAdam:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._finite_grads: dict[int, torch.Tensor] = {}  # gradients the clip found finite

    def _get_clip_function(self) -> Any:
        # RLlib's clip_gradients (Ray 2.60) by global norm, with torch's foreach kernels: one call
        # for the norms and one for the scaling instead of a few per gradient tensor.
        def clip(gradients_dict: Any, *, grad_clip: float | None = None, grad_clip_by: str = "value") -> Any:
            grads = [g for g in gradients_dict.values() if g is not None]
            if grad_clip is None or grad_clip_by != "global_norm" or not grads:
                return clip_gradients(gradients_dict, grad_clip=grad_clip, grad_clip_by=grad_clip_by)
            total_norm = get_total_norm(grads)
            if not bool(torch.isfinite(total_norm)):  # RLlib's own path caps the norm at 1e9
                return clip_gradients(gradients_dict, grad_clip=grad_clip, grad_clip_by=grad_clip_by)
            # RLlib's coefficient: grad_clip / max(norm + 1e-6, grad_clip), at most 1.
            torch._foreach_mul_(grads, torch.clamp(grad_clip / (total_norm + 1e-6), max=1.0))
            self._finite_grads.update((id(g), g) for g in grads)
            return total_norm

        return clip

    def configure_optimizers_for_module(self, module_id: Any, config: Any = None) -> None:
        # RLlib's own body (TorchLearner, Ray 2.60) with fused=True.
        params = self.get_parameters(self._module[module_id])  # type: ignore[attr-defined]
        self.register_optimizer(  # type: ignore[attr-defined]
            module_id=module_id,
            optimizer=torch.optim.Adam(params, fused=True),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def apply_gradients(self, gradients_dict: Any) -> None:
        grads = [g for g in gradients_dict.values() if g is not None]
        # Gradients the clip above found finite are finite after it (scaled by at most 1).
        # (The tensors themselves are held, so no id here can belong to a freed earlier one.)
        known_finite = all(self._finite_grads.get(id(g)) is g for g in grads)
        self._finite_grads.clear()
        if (
            not grads
            or self._grad_scalers is not None  # type: ignore[attr-defined]
            or self._lr_scheduler_classes is not None  # type: ignore[attr-defined]
            or not (known_finite or bool(torch.isfinite(get_total_norm(grads))))
        ):
            super().apply_gradients(gradients_dict)  # type: ignore[misc]
            return
        # Every gradient is finite: what RLlib's method then does (Ray 2.60), without its checks.
        for pid, grad in gradients_dict.items():
            self._params[pid].grad = grad  # type: ignore[attr-defined]
        for module_id, optimizer_names in self._module_optimizers.items():  # type: ignore[attr-defined]
            for optimizer_name in optimizer_names:
                self.get_optimizer(module_id, optimizer_name).step()  # type: ignore[attr-defined]


class FusedAdamPPOTorchLearner(_FusedAdam, PPOTorchLearner):
    """RLlib's PPO Learner, Adam fused, one finiteness check."""


# RLlib's IMPALALearner and TorchLearner declare remove_module differently (Ray 2.60); not this class's
class FusedAdamIMPALATorchLearner(_FusedAdam, IMPALATorchLearner):  # type: ignore[misc]
    """RLlib's IMPALA Learner, Adam fused, one finiteness check."""


# RLlib's APPOLearner and TorchLearner declare remove_module differently (Ray 2.60); not this class's
class FusedAdamAPPOTorchLearner(_FusedAdam, APPOTorchLearner):  # type: ignore[misc]
    """RLlib's APPO Learner, Adam fused, one finiteness check."""


LEARNER_CLASSES: dict[str, Any] = {
    "PPO": FusedAdamPPOTorchLearner,
    "IMPALA": FusedAdamIMPALATorchLearner,
    "APPO": FusedAdamAPPOTorchLearner,
}
