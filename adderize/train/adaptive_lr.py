"""Adaptive learning-rate scaling for adder layers (Universal Adder Neural Networks, eq. 33).

``alpha_l = eta * sqrt(k) / ||grad_l||_2`` rescales the gradient of adder layer ``l`` (with
``k`` elements) so that every adder layer takes a step of the same size.

Conventions (chosen deliberately; the official code is huawei-noah/AdderNet):

* ``eta = 0.2`` by default: the official code's constant (its backward computes
  ``g / ||g|| * sqrt(k) / 5``, i.e. ``0.2 * sqrt(k) / ||g||``); the papers quote 0.1 - 0.2.
* ``per="step"`` (default) normalises the gradient of one optimiser step: it runs as an
  optimizer step pre-hook, after every backward of the step (gradient accumulation), after
  the DDP all-reduce, after the user's gradient clipping and after AMP's
  ``GradScaler.unscale_``, and before momentum / weight decay. Every step then moves each
  adder layer by the same amount whatever the accumulation or world size.
* ``per="backward"`` reproduces the official code: each backward call normalises its own
  gradient (a tensor hook, so before accumulation and before DDP averages the ranks). With
  one backward per step on one process the two are identical; with 2 micro-batches the
  updates differ (measured 0.37 relative), so use it to reproduce the official numbers.
  Under AMP this mode sees scaled gradients: the scaling cancels in ``g / ||g||``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adderize._errors import AdderizeError

__all__ = ["PER", "AdaptiveLRScaling", "adder_weights"]

PER = ("step", "backward")


def adder_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every layer in ``model`` (DDP-wrapped models included) whose op takes
    the adaptive learning rate (``OpSpec.adaptive_lr``: the adder layers built in)."""
    from adderize.passes.registry import layers_with

    return [m.weight for m in layers_with(model, "adaptive_lr")]


class AdaptiveLRScaling:
    """Scales adder-layer gradients by ``eta * sqrt(k) / ||grad||`` (module docstring).

    Args:
        model: the model (or DDP wrapper) whose adder layers are scaled.
        eta: the papers' hyper-parameter controlling the adder learning rate (0.1 - 0.2;
            default 0.2, the official code's).
        per: ``"step"`` normalises each optimiser step's gradient, ``"backward"`` each
            backward call's (the official code's behaviour).

    Use ``AdaptiveLRScaling(model).attach(optimizer)``; layers whose gradient is zero or
    missing are left alone.
    """

    def __init__(
        self, model: nn.Module, eta: float = 0.2, per: Literal["step", "backward"] = "step"
    ) -> None:
        if not (isinstance(eta, (int, float)) and eta > 0 and math.isfinite(eta)):
            raise AdderizeError(f"eta must be a positive finite number, got {eta!r}")
        if per not in PER:
            raise AdderizeError(f"per must be one of {PER}, got {per!r}")
        self.eta = float(eta)
        self.per = per
        self.params = adder_weights(model)
        if not self.params:
            raise AdderizeError("the model has no adder layers (Adder2d / AdderLinear) to scale")

    def _scale(self, g: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return torch.where(norm > 0, self.eta * math.sqrt(g.numel()) / norm.clamp_min(1e-30), 1.0)

    @torch.no_grad()
    def scale_(self) -> None:
        """Rescale the current gradients in place."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, [self._scale(g, n) for g, n in zip(grads, norms, strict=True)])

    def _scaled(self, g: torch.Tensor) -> torch.Tensor:
        return g * self._scale(g, torch.linalg.vector_norm(g))

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle | _Handles:
        """Scale every step of ``optimizer`` (``per="step"``: right before ``step()``;
        ``per="backward"``: in every backward). The handle's ``remove()`` detaches."""
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = sum(id(p) not in owned for p in self.params)
        if missing:
            raise AdderizeError(
                f"{missing} of {len(self.params)} adder weights are not optimised by this "
                "optimizer: create it from the converted model's parameters"
            )
        if self.per == "backward":
            return _Handles([p.register_hook(self._scaled) for p in self.params])
        return optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.scale_())


class _Handles:
    """Several hook handles removed together."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
