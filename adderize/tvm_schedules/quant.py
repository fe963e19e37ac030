"""Low-bit kernels: int8 adder convolution and bit-packed binary (XNOR) convolution.

Int8 adder: one shared uint8 grid for inputs and weights, calibrated on data.

``|x - w|`` is only cheap in integers when ``x`` and ``w`` share the scale and zero point:
``|s(qx - z) - s(qw - z)| = s |qx - qw|``. :func:`calibrate` picks that grid (per tensor,
asymmetric) from the layer's weights and its inputs over a few batches; the kernel sums
byte absolute differences in int32 (``compute.int8_conv_forward_compute``) and the float
output is ``-scale * sum (+ bias)``. Each ``|x - w|`` term is off by at most one step
``scale``, so the error is at most ``scale * Cin * kh * kw``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from adderize.kernels.tvm_build import kernel
from adderize.nn import Adder2d, BinaryConv2d
from adderize.tvm_schedules.compute import out_size

__all__ = ["SharedGrid", "binary_conv2d", "calibrate", "int8_adder_conv2d"]


@dataclass(frozen=True)
class SharedGrid:
    """``q = clamp(round(v / scale) + zero_point, 0, 255)`` for inputs and weights alike."""

    scale: float
    zero_point: int

    @classmethod
    def covering(cls, lo: float, hi: float) -> SharedGrid:
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero (the padding value) stays exact
        scale = (hi - lo) / 255 if hi > lo else 1.0
        return cls(scale, round(-lo / scale))

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        q = torch.round(v / self.scale) + self.zero_point
        return q.clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def calibrate(
    model: torch.nn.Module, layer: Adder2d, batches: Iterable[torch.Tensor]
) -> SharedGrid:
    """The grid covering ``layer``'s weights and its inputs while ``model`` runs ``batches``."""
    w = layer.op_weight()
    lo, hi = float(w.min()), float(w.max())
    seen = []

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append((float(args[0].min()), float(args[0].max())))

    handle = layer.register_forward_pre_hook(hook)
    try:
        for x in batches:
            model(x)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("calibrate needs at least one batch that reaches the layer")
    return SharedGrid.covering(min(lo, *(s[0] for s in seen)), max(hi, *(s[1] for s in seen)))


def int8_adder_conv2d(x: torch.Tensor, layer: Adder2d, grid: SharedGrid) -> torch.Tensor:
    """``layer(x)`` computed in uint8 / int32 on the TVM kernel (NCHW float in and out)."""
    s, d = layer.stride, layer.dilation
    if layer.groups != 1 or s[0] != s[1] or d[0] != d[1]:
        raise ValueError(
            f"the int8 kernel covers groups=1 with square stride/dilation; got groups="
            f"{layer.groups}, stride={s}, dilation={d}"
        )
    xp = grid.quantize(layer._pad(x)).permute(0, 2, 3, 1).contiguous()
    wq = grid.quantize(layer.op_weight().detach()).permute(0, 2, 3, 1).contiguous()
    n, hp, wp, c = xp.shape
    t, kh, kw, _ = wq.shape
    oh, ow = out_size(hp, kh, s[0], d[0]), out_size(wp, kw, s[0], d[0])
    out = torch.empty(n, oh, ow, t, dtype=torch.int32)
    kernel("int8_conv_forward", n, hp, wp, c, t, kh, kw, s[0], d[0])(xp, wq, out)
    y = out.permute(0, 3, 1, 2).float() * -grid.scale
    return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` booleans -> ``[..., ceil(C / 32)]`` int32 words (bit k = channel k)."""
    c = bits.shape[-1]
    words = -(-c // 32)
    padded = torch.nn.functional.pad(bits.to(torch.int64), (0, words * 32 - c))
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32)
    packed = (padded.reshape(*bits.shape[:-1], words, 32) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


@torch.no_grad()
def binary_conv2d(x: torch.Tensor, layer: BinaryConv2d) -> torch.Tensor:
    """``layer(x)`` (eval mode) as a bit-packed XNOR + popcount TVM kernel (NCHW float in
    and out): signs packed 32 channels per word, padding masked out."""
    s, d = layer.stride, layer.dilation
    if layer.groups != 1 or s[0] != s[1] or d[0] != d[1]:
        raise ValueError(
            f"the binary kernel covers groups=1 with square stride/dilation; got groups="
            f"{layer.groups}, stride={s}, dilation={d}"
        )
    if layer.training:
        raise ValueError("binary_conv2d runs a layer in eval mode: call layer.eval() first")
    signs = layer._pad(layer._binarize_input(x, 1))  # +-1, padding 0 (as the layer)
    nhwc = signs.permute(0, 2, 3, 1)
    xb, mb = _pack_bits(nhwc > 0), _pack_bits(nhwc != 0)
    w = layer.op_weight().detach()
    wb = _pack_bits(w.permute(0, 2, 3, 1) >= 0)
    alpha = w.abs().flatten(1).mean(1).contiguous()
    n, hp, wp, q = xb.shape
    t, kh, kw, _ = wb.shape
    oh, ow = out_size(hp, kh, s[0], d[0]), out_size(wp, kw, s[0], d[0])
    out = torch.empty(n, oh, ow, t)
    fn = kernel("binary_conv_forward", n, hp, wp, q, t, kh, kw, s[0], d[0])
    fn(xb.contiguous(), mb.contiguous(), wb.contiguous(), alpha, out)
    y = out.permute(0, 3, 1, 2)
    return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)
