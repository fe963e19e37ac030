"""The row layouts of the adder kernels: a conv's padded NCHW input unfolded to the
``[G, M, K]`` rows the row kernels take (and their results folded back), and a linear
layer's input as one group of rows."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ConvRows", "LinearRows", "conv_layout", "conv_rows"]


@dataclass(frozen=True)
class ConvRows:
    """Maps a padded NCHW input to the ``[G, M, K]`` rows of the kernels, and back."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        return (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1

    @property
    def pointwise(self) -> bool:
        """A 1x1 stride-1 conv: its rows are the input's pixels (no unfold, no fold)."""
        return self.kernel == (1, 1) and self.stride == (1, 1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = self.groups
        if self.pointwise:  # [N, C, H, W] -> [G, N*H*W, C/G]
            return x.permute(0, 2, 3, 1).reshape(-1, g, x.shape[1] // g).transpose(0, 1)
        cols = F.unfold(x, self.kernel, dilation=self.dilation, stride=self.stride)
        k_total, length = cols.shape[1], cols.shape[2]
        cols = cols.reshape(n, g, k_total // g, length).permute(1, 0, 3, 2)
        return cols.reshape(g, n * length, k_total // g)

    def rows_to_input(self, grad_rows: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        n, _, h, w = x_shape
        g, _, kg = grad_rows.shape
        if self.pointwise:
            return grad_rows.transpose(0, 1).reshape(n, h, w, g * kg).permute(0, 3, 1, 2)
        oh, ow = self.out_hw(h, w)
        cols = grad_rows.reshape(g, n, oh * ow, kg).permute(1, 0, 3, 2).reshape(n, g * kg, -1)
        return F.fold(cols, (h, w), self.kernel, dilation=self.dilation, stride=self.stride)

    def rows_to_output(self, out_rows: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        n, _, h, w = x_shape
        g, _, tg = out_rows.shape
        oh, ow = self.out_hw(h, w)
        return out_rows.reshape(g, n, oh, ow, tg).permute(1, 0, 4, 2, 3).reshape(n, g * tg, oh, ow)

    def output_to_rows(self, grad_out: torch.Tensor) -> torch.Tensor:
        n, c, oh, ow = grad_out.shape
        g = self.groups
        return grad_out.reshape(n, g, c // g, oh * ow).permute(1, 0, 3, 2).reshape(g, -1, c // g)

    def weight_rows(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(self.groups, weight.shape[0] // self.groups, -1)


@functools.lru_cache(maxsize=1024)
def conv_rows(kernel: Any, stride: Any, dilation: Any, groups: int) -> ConvRows:
    """One :class:`ConvRows` per geometry: a layer's calls share it (cheap to compare)."""
    return ConvRows(kernel, stride, dilation, groups)


def conv_layout(
    weight: torch.Tensor, stride: tuple[int, int], dilation: tuple[int, int], groups: int
) -> ConvRows:
    return conv_rows(tuple(weight.shape[-2:]), tuple(stride), tuple(dilation), groups)


@dataclass(frozen=True)
class LinearRows:
    """Maps ``[..., in_features]`` inputs to ``[1, M, K]`` rows, and back."""

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, -1, x.shape[-1])

    def rows_to_input(self, grad_rows: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        return grad_rows.reshape(x_shape)

    def rows_to_output(self, out_rows: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        return out_rows.reshape(*x_shape[:-1], out_rows.shape[-1])

    def output_to_rows(self, grad_out: torch.Tensor) -> torch.Tensor:
        return grad_out.reshape(1, -1, grad_out.shape[-1])

    def weight_rows(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.unsqueeze(0)
