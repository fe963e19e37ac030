"""XNOR-Net style binary layers (Rastegari et al., ECCV 2016).

Activations: ``sign(x)`` (with ``sign(0) = +1``) and a clipped straight-through estimator,
whose gradient passes where ``|x| <= 1``. Weights: ``alpha * sign(W)`` with ``alpha`` the mean
``|W|`` of each output channel, and a straight-through gradient to the latent float ``W``.
Padding is applied after binarisation, so padded positions contribute 0 (as in XNOR-Net
and Bi-Real Net implementations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adderize.nn._base import Conv2dLike, LinearLike

__all__ = ["BinaryConv2d", "BinaryLinear", "binarize_activation", "binarize_weight"]


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` forward; gradient 1 where ``|x| <= 1``, else 0 (clipped STE)."""
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (_sign(x) - clipped).detach()


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """``mean|W| * sign(W)`` per output channel (dim 0); straight-through gradient."""
    alpha = w.detach().abs().flatten(1).mean(1).reshape(-1, *([1] * (w.dim() - 1)))
    return w + (alpha * _sign(w.detach()) - w).detach()


class BinaryConv2d(Conv2dLike):
    """Drop-in for ``nn.Conv2d`` with binary activations and scaled binary weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            self._pad(binarize_activation(x)),
            binarize_weight(self.weight),
            self.bias,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )


class BinaryLinear(LinearLike):
    """Drop-in for ``nn.Linear`` with binary activations and scaled binary weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(binarize_activation(x), binarize_weight(self.weight), self.bias)
