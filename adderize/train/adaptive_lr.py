"""Adaptive learning-rate scaling for adder layers (Universal Adder Neural Networks, eq. 33).

``alpha_l = eta * sqrt(k) / ||grad_l||_2`` rescales the gradient of adder layer ``l`` (with
``k`` elements) so that every adder layer takes a step of the same size. It runs as an
optimizer step pre-hook: after backward, after the DDP all-reduce, after the user's
gradient clipping and after AMP's ``GradScaler.unscale_`` (``scaler.step`` only calls
``optimizer.step`` when the gradients are finite), and before momentum / weight decay.
Nothing is scaled inside ``backward`` (the research code's ``/5`` there is ``eta = 0.2``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adderize.nn import Adder2d, AdderLinear

__all__ = ["AdaptiveLRScaling", "adder_weights"]


def adder_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every adder layer in ``model`` (DDP-wrapped models included)."""
    return [m.weight for m in model.modules() if isinstance(m, (Adder2d, AdderLinear))]


class AdaptiveLRScaling:
    """Scales adder-layer gradients by ``eta * sqrt(k) / ||grad||`` before each step.

    Args:
        model: the model (or DDP wrapper) whose adder layers are scaled.
        eta: the papers' hyper-parameter controlling the adder learning rate (0.1 - 0.2).

    Use ``AdaptiveLRScaling(model, eta=0.1).attach(optimizer)``; layers whose gradient is
    zero or missing are left alone.
    """

    def __init__(self, model: nn.Module, eta: float = 0.1) -> None:
        if not (isinstance(eta, (int, float)) and eta > 0 and math.isfinite(eta)):
            raise ValueError(f"eta must be a positive finite number, got {eta!r}")
        self.eta = float(eta)
        self.params = adder_weights(model)
        if not self.params:
            raise ValueError("the model has no adder layers (Adder2d / AdderLinear) to scale")

    @torch.no_grad()
    def scale_(self) -> None:
        """Rescale the current gradients in place."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm(grads)
        scales = [
            torch.where(n > 0, self.eta * math.sqrt(g.numel()) / n.clamp_min(1e-30), 1.0)
            for g, n in zip(grads, norms, strict=True)
        ]
        torch._foreach_mul_(grads, scales)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Run :meth:`scale_` right before every ``optimizer.step()``."""
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = sum(id(p) not in owned for p in self.params)
        if missing:
            raise ValueError(
                f"{missing} of {len(self.params)} adder weights are not optimised by this "
                "optimizer: create it from the converted model's parameters"
            )
        return optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.scale_())
