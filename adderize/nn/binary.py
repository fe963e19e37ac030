"""XNOR-Net style binary layers (Rastegari et al., ECCV 2016).

Activations: ``sign(x)`` (with ``sign(0) = +1``) and a clipped straight-through estimator,
whose gradient passes where ``|x| <= 1``. Weights: ``alpha * sign(W)`` with ``alpha`` the mean
``|W|`` of each output channel, and a straight-through gradient to the latent float ``W``.
Padding is applied after binarisation, so padded positions contribute 0 (as in XNOR-Net
and Bi-Real Net implementations).

The input is binarised around a learnable per-channel threshold, ``sign(x - beta)``
(ReActNet's RSign, Liu et al., ECCV 2020). In a converted network the layer's input usually
follows a ReLU, so ``sign(x)`` would be +1 everywhere and carry no information; ``beta`` is
therefore initialised from the data, to the per-channel mean of the first training batch
(``threshold_set`` records that it happened; it is saved with the model).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adderize.nn._base import Conv1dLike, Conv2dLike, LinearLike

__all__ = ["BinaryConv1d", "BinaryConv2d", "BinaryLinear", "binarize_activation", "binarize_weight"]


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


class _Thresholded(nn.Module):
    """The learnable input threshold ``beta`` with its data-dependent initialisation."""

    threshold: nn.Parameter
    threshold_set: torch.Tensor

    def _init_threshold(self, channels: int) -> None:
        self.threshold = nn.Parameter(torch.zeros(channels))
        self.register_buffer("threshold_set", torch.zeros((), dtype=torch.bool))

    def binarize_input(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """``sign(x - threshold)`` per input channel (the threshold set from the first
        training batch), with a straight-through gradient."""
        dim = channel_dim % x.dim()
        if self.training and not bool(self.threshold_set):
            with torch.no_grad():
                others = [d for d in range(x.dim()) if d != dim]
                self.threshold.copy_(x.detach().float().mean(others))
                self.threshold_set.fill_(True)
        shape = [1] * x.dim()
        shape[dim] = -1
        return binarize_activation(x - self.threshold.view(shape).to(x.dtype))


class BinaryConv2d(Conv2dLike, _Thresholded):
    """Drop-in for ``nn.Conv2d`` with binary activations and scaled binary weights."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_threshold(self.in_channels)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            self.pad_input(self.binarize_input(x, 1)),
            self.transformed_weight(binarize_weight),
            self.bias,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )


class BinaryConv1d(Conv1dLike, BinaryConv2d):
    """Drop-in for ``nn.Conv1d``: :class:`BinaryConv2d` over ``[N, C, 1, L]``."""


class BinaryLinear(LinearLike, _Thresholded):
    """Drop-in for ``nn.Linear`` with binary activations and scaled binary weights."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_threshold(self.in_features)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(
            self.binarize_input(x, -1), self.transformed_weight(binarize_weight), self.bias
        )
