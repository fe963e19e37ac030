"""Normalisation inserted after adder layers that have none (the papers need BN after every
adder layer: its output variance is far larger than a conv's, eq. 29)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BatchNormLastDim", "WithNorm"]


class BatchNormLastDim(nn.BatchNorm1d):
    """BatchNorm over the last dimension of ``[..., C]`` (2-D or channels-last) tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class WithNorm(nn.Module):
    """``norm(op(x))``: a converted layer and the normalisation inserted after it.

    Keeps the layer's parameters under ``<name>.op`` and the norm under ``<name>.norm``.
    Attributes it does not have itself are read from ``op``, so a parent module that reads
    the layer it called (``self.proj.weight``, ``self.conv.kernel_size``: ConViT, XCiT,
    EdgeNeXt, DaViT) sees the replaced layer's attributes, as it did before conversion.
    """

    def __init__(self, op: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.op = op
        self.norm = norm

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("op", "norm") or "op" not in self._modules:
                raise
            return getattr(self._modules["op"], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.op(x))
