"""torch.export of a converted model: its adder, int8 adder and binary layers as single
custom ops (``adderize::...``) that the Relax importer (:mod:`adderize.deploy.model`)
maps to the project's kernels."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.kernels.adder_op import adder2d, adder_linear
from adderize.nn import Adder1d, Adder2d, AdderLinear, BinaryConv2d
from adderize.tvm_schedules.compute import out_size

__all__ = ["exportable"]


# ------------------------------------------------------------------ export-time custom ops
@torch.library.custom_op("adderize::adder_conv2d", mutates_args=())
def _adder_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int, groups: int, p: float
) -> torch.Tensor:
    """Adder conv of an already padded NCHW input (eager: the layer's own kernels)."""
    s, d = (stride, stride), (dilation, dilation)
    return adder2d(x, weight, None, s, d, groups, p, 1 << 22, "auto").contiguous()


@_adder_conv2d.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int, groups: int, p: float):
    n, _, hp, wp = x.shape
    t, _, kh, kw = weight.shape
    oh, ow = out_size(hp, kh, stride, dilation), out_size(wp, kw, stride, dilation)
    return x.new_empty(n, t, oh, ow)


@torch.library.custom_op("adderize::adder_linear", mutates_args=())
def _adder_linear(x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
    """Adder linear of a 2-D input (eager: the layer's own kernels)."""
    return adder_linear(x, weight, None, p, 1 << 22, "auto").contiguous()


@_adder_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, p: float):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("adderize::int8_adder_conv2d", mutates_args=())
def _int8_adder_conv2d(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: float,
    zero_point: int,
    stride: int,
    dilation: int,
) -> torch.Tensor:
    """``-scale * sum |q(x) - qw|`` of an already padded NCHW float input (eager: the int8
    kernel; ``qweight`` in the kernel's [T, kh, kw, C] uint8 layout)."""
    from adderize.deploy.quant import SharedGrid, int8_window_sums

    grid = SharedGrid(scale, zero_point)
    sums = int8_window_sums(x, qweight, stride, dilation, grid)
    return (sums.float() * -scale).contiguous()


def _fake_nchw_out(x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    """The NCHW float output of a low-bit conv op on padded NCHW ``x`` with a weight in the
    kernels' [T, kh, kw, C-ish] layout (the ops' export-time shape)."""
    n, _, hp, wp = x.shape
    t, kh, kw, _ = w.shape
    oh, ow = out_size(hp, kh, stride, dilation), out_size(wp, kw, stride, dilation)
    return x.new_empty(n, t, oh, ow, dtype=torch.float32)


@_int8_adder_conv2d.register_fake
def _(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: float,
    zero_point: int,
    stride: int,
    dilation: int,
) -> torch.Tensor:
    return _fake_nchw_out(x, qweight, stride, dilation)


class _ExportInt8Adder2d(nn.Module):
    """An :class:`~adderize.deploy.quant.Int8Adder2d` as padding + one
    ``adderize::int8_adder_conv2d`` op (+ bias)."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        y = torch.ops.adderize.int8_adder_conv2d(
            m.layer.pad_input(x), m.qweight, m.grid.scale, m.grid.zero_point, m.stride, m.dilation
        )
        bias = m.layer.bias
        return y if bias is None else y + bias.view(1, -1, 1, 1)


@torch.library.custom_op("adderize::binary_conv2d", mutates_args=())
def _binary_conv2d(
    signs: torch.Tensor, wb: torch.Tensor, alpha: torch.Tensor, stride: int, dilation: int
) -> torch.Tensor:
    """XNOR + popcount conv of padded NCHW signs (eager: the packed kernel)."""
    from adderize.deploy.quant import packed_binary_conv

    return packed_binary_conv(signs, wb, alpha, stride, dilation).contiguous()


@_binary_conv2d.register_fake
def _(
    signs: torch.Tensor, wb: torch.Tensor, alpha: torch.Tensor, stride: int, dilation: int
) -> torch.Tensor:
    return _fake_nchw_out(signs, wb, stride, dilation)


class _ExportBinaryConv2d(nn.Module):
    """A :class:`BinaryConv2d` (eval) as its input binarisation and padding (elementwise
    torch ops) + one ``adderize::binary_conv2d`` op on the packed weight (+ bias)."""

    def __init__(self, layer: BinaryConv2d) -> None:
        from adderize.deploy.quant import binary_geometry, pack_binary_weight

        super().__init__()
        self.layer = layer
        self.stride, self.dilation = binary_geometry(layer)
        wb, alpha = pack_binary_weight(layer)
        self.register_buffer("wb", wb)
        self.register_buffer("alpha", alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        signs = m.pad_input(m.binarize_input(x, 1))
        y = torch.ops.adderize.binary_conv2d(signs, self.wb, self.alpha, self.stride, self.dilation)
        return y if m.bias is None else y + m.bias.view(1, -1, 1, 1)


class _ExportAdder2d(nn.Module):
    """An :class:`Adder2d` as padding + one ``adderize::adder_conv2d`` op (+ bias)."""

    def __init__(self, layer: Adder2d) -> None:
        super().__init__()
        if layer.stride[0] != layer.stride[1] or layer.dilation[0] != layer.dilation[1]:
            raise AdderizeError(
                f"TVM export supports square stride and dilation, got stride {layer.stride} "
                f"dilation {layer.dilation}"
            )
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        y = torch.ops.adderize.adder_conv2d(
            m.pad_input(x), m.op_weight(), m.stride[0], m.dilation[0], m.groups, float(m.p)
        )
        return y if m.bias is None else y + m.bias.view(1, -1, 1, 1)


class _ExportAdder1d(_ExportAdder2d):
    """An :class:`Adder1d` as its 2-D op over ``[N, C, 1, L]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unsqueeze(2)).squeeze(2)


class _ExportAdderLinear(nn.Module):
    def __init__(self, layer: AdderLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        rows = x.reshape(-1, x.shape[-1])
        y = torch.ops.adderize.adder_linear(rows, m.weight, float(m.p))
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if m.bias is None else y + m.bias


def _binary_reason(layer: BinaryConv2d) -> str | None:
    from adderize.deploy.quant import binary_geometry

    try:
        binary_geometry(layer)
    except ValueError as e:
        return str(e)
    return None


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose adder layers are single custom ops (for torch.export)."""
    from adderize.deploy.quant import Int8Adder2d

    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        if isinstance(parent, (Int8Adder2d, _ExportInt8Adder2d, _ExportBinaryConv2d)):
            continue  # the wrapped layer only lends its padding, threshold and bias
        for name, child in list(parent.named_children()):
            if isinstance(child, Int8Adder2d):
                setattr(parent, name, _ExportInt8Adder2d(child))
            elif type(child) is BinaryConv2d and _binary_reason(child) is None:
                setattr(parent, name, _ExportBinaryConv2d(child))
            elif isinstance(child, Adder1d):
                setattr(parent, name, _ExportAdder1d(child))
            elif isinstance(child, Adder2d):
                setattr(parent, name, _ExportAdder2d(child))
            elif isinstance(child, AdderLinear):
                setattr(parent, name, _ExportAdderLinear(child))
    return model
