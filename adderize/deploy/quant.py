"""Low-bit kernels: int8 adder convolution and bit-packed binary (XNOR) convolution.

Int8 adder: one shared uint8 grid for inputs and weights, calibrated on data.

``|x - w|`` is only cheap in integers when ``x`` and ``w`` share the scale and zero point:
``|s(qx - z) - s(qw - z)| = s |qx - qw|``. :func:`calibrate` picks that grid (per tensor,
asymmetric) from the layer's weights and its inputs over a few batches; the kernel sums
byte absolute differences (``compute.int8_conv_forward_compute``, on x86 with the
``psadbw`` instruction: :mod:`adderize.tvm_schedules.int8`) and the float output is
``-scale * sum (+ bias)``. Each ``|x - w|`` term is off by at most one step
``scale``, so the error is at most ``scale * Cin * kh * kw``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adderize._errors import AdderizeError
from adderize.nn import Adder2d, BinaryConv2d
from adderize.tvm_schedules import int8
from adderize.tvm_schedules.build import kernel
from adderize.tvm_schedules.compute import out_size
from adderize.tvm_schedules.kinds import Workload

__all__ = [
    "Int8Adder2d",
    "QuantReport",
    "SharedGrid",
    "binary_conv2d",
    "binary_geometry",
    "calibrate",
    "int8_adder_conv2d",
    "int8_window_sums",
    "pack_binary_weight",
    "packed_binary_conv",
    "quantize_model",
]


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
def _grids(
    model: torch.nn.Module, layers: dict[str, Adder2d], batches: Iterable[torch.Tensor]
) -> dict[str, SharedGrid]:
    """The grid of each layer in ``layers``, covering its weights and the inputs it saw
    while ``model`` ran ``batches`` (one pass for all); layers never reached are left out."""
    ranges: dict[str, list[float]] = {}

    def hook(name: str) -> Any:
        def fn(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            lo, hi = float(args[0].min()), float(args[0].max())
            seen = ranges.setdefault(name, [lo, hi])
            seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)

        return fn

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in layers.items()]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    grids = {}
    for name, (lo, hi) in ranges.items():
        w = layers[name].op_weight()
        grids[name] = SharedGrid.covering(min(lo, float(w.min())), max(hi, float(w.max())))
    return grids


def calibrate(
    model: torch.nn.Module, layer: Adder2d, batches: Iterable[torch.Tensor]
) -> SharedGrid:
    """The grid covering ``layer``'s weights and its inputs while ``model`` runs ``batches``."""
    grids = _grids(model, {"layer": layer}, batches)
    if not grids:
        raise AdderizeError("calibrate needs at least one batch that reaches the layer")
    return grids["layer"]


def _int8_geometry(layer: Adder2d) -> tuple[int, int]:
    """(stride, dilation) of a layer the int8 kernel covers; ValueError naming why not."""
    s, d = layer.stride, layer.dilation
    if layer.groups != 1 or s[0] != s[1] or d[0] != d[1]:
        raise AdderizeError(
            f"the int8 kernel covers groups=1 with square stride/dilation; got groups="
            f"{layer.groups}, stride={s}, dilation={d}"
        )
    return s[0], d[0]


def _chunk() -> tuple[int, int]:
    """(SAD group, channels per chunk) of this machine's int8 kernel."""
    group = int8.sad_group() or 4
    return group, 8 * group


def _int8_weight(layer: Adder2d, grid: SharedGrid) -> torch.Tensor:
    """The layer's weight on ``grid`` as the kernel reads it: [T, kh, kw, C] uint8, the
    channels padded to whole SAD chunks with the zero point (as the input's padding: both
    sides hold one value there, so ``|z - z|`` adds nothing)."""
    pad = -layer.in_channels % _chunk()[1]
    wq = grid.quantize(layer.op_weight().detach().float())
    return F.pad(wq, (0, 0, 0, 0, 0, pad), value=grid.zero_point).permute(0, 2, 3, 1).contiguous()


def int8_window_sums(
    xp: torch.Tensor, qweight: torch.Tensor, stride: int, dil: int, grid: SharedGrid
) -> torch.Tensor:
    """``sum |q(x) - qw|`` over the windows of the padded NCHW float input ``xp`` with the
    kernel-layout weight ``qweight`` (:func:`_int8_weight`): [N, T, OH, OW] int32 (a
    channels-last view of the kernel's NHWC output)."""
    pad = qweight.shape[-1] - xp.shape[1]
    xq = F.pad(grid.quantize(xp.float()), (0, 0, 0, 0, 0, pad), value=grid.zero_point)
    xq = xq.permute(0, 2, 3, 1).contiguous()
    n, hp, wp, c = xq.shape
    t, kh, kw, _ = qweight.shape
    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    out = torch.empty(n, oh, ow, t, dtype=torch.int32)
    group = _chunk()[0]
    w = Workload.of("int8_conv_forward", n, hp, wp, c, t, kh, kw, stride, dil, group)
    kernel(w)(xq, qweight, out)
    return out.permute(0, 3, 1, 2)


def int8_adder_conv2d(x: torch.Tensor, layer: Adder2d, grid: SharedGrid) -> torch.Tensor:
    """``layer(x)`` computed in uint8 / int32 on the TVM kernel (NCHW float in and out)."""
    sums = int8_window_sums(
        layer.pad_input(x), _int8_weight(layer, grid), *_int8_geometry(layer), grid
    )
    y = sums.float() * -grid.scale
    return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)


class Int8Adder2d(torch.nn.Module):
    """An :class:`~adderize.nn.Adder2d` deployed in int8 (inference only): its weight held
    in uint8 on the layer's :class:`SharedGrid`, every input quantized to the same grid,
    ``-scale * sum |qx - qw| (+ bias)`` computed by the int8 TVM kernel
    (:func:`reference` computes the same in PyTorch)."""

    def __init__(self, layer: Adder2d, grid: SharedGrid) -> None:
        super().__init__()
        self.stride, self.dilation = _int8_geometry(layer)
        self.layer, self.grid = layer, grid
        self.register_buffer("qweight", _int8_weight(layer, grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, geometry = self.layer.pad_input(x), (self.stride, self.dilation)
        with torch.no_grad():
            y = int8_window_sums(xp, self.qweight, *geometry, self.grid).float() * -self.grid.scale
        bias = self.layer.bias
        return y if bias is None else y + bias.detach().view(1, -1, 1, 1)

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same integer computation in plain PyTorch (float64 sums of the uint8 terms)."""
        layer, grid = self.layer, self.grid
        xq = grid.quantize(layer.pad_input(x).float()).double()
        wq = self.qweight[..., : layer.in_channels].permute(0, 3, 1, 2).double()
        cols = F.unfold(xq, wq.shape[-2:], dilation=layer.dilation, stride=layer.stride)
        sums = (cols.unsqueeze(1) - wq.flatten(1).unsqueeze(-1)).abs().sum(2)  # [N, T, L]
        hp, wp = xq.shape[-2:]
        shape = [out_size(size, k, st, d) for size, k, st, d in zip(
            (hp, wp), wq.shape[-2:], layer.stride, layer.dilation, strict=True)]  # fmt: skip
        y = sums.reshape(x.shape[0], -1, *shape).float() * -grid.scale
        return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"scale={self.grid.scale:.4g}, zero_point={self.grid.zero_point}"


@dataclass
class QuantReport:
    """What :func:`quantize_model` did: ``{module name: reason}`` for the adder layers it
    left in float, and the names it quantized."""

    quantized: list[str]
    kept: dict[str, str]

    def summary(self) -> str:
        lines = [f"int8: {len(self.quantized)} adder layer(s) quantized, {len(self.kept)} kept"]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        return "\n".join(lines)


def _int8_reason(layer: Adder2d) -> str | None:
    """Why ``layer`` stays float in an int8 model (None: it is quantized)."""
    if layer.weight.dim() != 4:
        return "a 1-d adder layer (the int8 kernel is 2-d)"
    if layer.p != 1.0:
        return f"p = {layer.p:g} (the int8 kernel computes the l1 distance, p = 1)"
    if layer.blending:
        return "still blending (finish the anneal first)"
    try:
        _int8_geometry(layer)
    except ValueError as e:
        return str(e)
    return None


@torch.no_grad()
def quantize_model(
    model: torch.nn.Module, batches: Iterable[torch.Tensor]
) -> tuple[torch.nn.Module, QuantReport]:
    """An int8 copy of ``model`` (eval mode): every :class:`~adderize.nn.Adder2d` the int8
    kernel covers becomes an :class:`Int8Adder2d` on the grid covering its weights and the
    inputs it saw while the float model ran ``batches`` (one pass, all layers at once);
    the rest of the model stays as it is. Returns the copy and a :class:`QuantReport`."""
    model = copy.deepcopy(model).eval()
    layers, kept = {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, Adder2d):
            why = _int8_reason(mod)
            if why is None:
                layers[name] = mod
            else:
                kept[name] = why
    batches = list(batches)
    if layers and not batches:
        raise AdderizeError("quantize_model needs at least one calibration batch")
    grids = _grids(model, layers, batches)
    for name, layer in layers.items():
        if name not in grids:
            kept[name] = "not reached by the calibration batches"
            continue
        model.set_submodule(name, Int8Adder2d(layer, grids[name]))
    quantized = [n for n in layers if n not in kept]
    return model, QuantReport(quantized, kept)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` booleans -> ``[..., ceil(C / 32)]`` int32 words (bit k = channel k)."""
    c = bits.shape[-1]
    words = -(-c // 32)
    padded = torch.nn.functional.pad(bits.to(torch.int64), (0, words * 32 - c))
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32)
    packed = (padded.reshape(*bits.shape[:-1], words, 32) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def binary_geometry(layer: BinaryConv2d) -> tuple[int, int]:
    """(stride, dilation) of a layer the packed kernel covers; ValueError naming why not."""
    s, d = layer.stride, layer.dilation
    if layer.groups != 1 or s[0] != s[1] or d[0] != d[1] or layer.weight.dim() != 4:
        raise AdderizeError(
            f"the binary kernel covers 2-d groups=1 with square stride/dilation; got groups="
            f"{layer.groups}, stride={s}, dilation={d}"
        )
    return s[0], d[0]


@torch.no_grad()
def pack_binary_weight(layer: BinaryConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign bits [T, kh, kw, Q] int32, per-channel scale ``alpha`` [T]) of ``layer``."""
    w = layer.op_weight().detach()
    alpha = w.abs().flatten(1).mean(1).contiguous()
    return _pack_bits(w.permute(0, 2, 3, 1) >= 0).contiguous(), alpha


def packed_binary_conv(
    signs: torch.Tensor, wb: torch.Tensor, alpha: torch.Tensor, stride: int, dil: int
) -> torch.Tensor:
    """The XNOR + popcount kernel on padded NCHW ``signs`` (+-1, 0 for padding) with packed
    weights (:func:`pack_binary_weight`): NCHW float (a channels-last view), no bias."""
    nhwc = signs.permute(0, 2, 3, 1)
    xb, mb = _pack_bits(nhwc > 0), _pack_bits(nhwc != 0)
    n, hp, wp, q = xb.shape
    t, kh, kw, _ = wb.shape
    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    out = torch.empty(n, oh, ow, t)
    fn = kernel(Workload.of("binary_conv_forward", n, hp, wp, q, t, kh, kw, stride, dil))
    fn(xb.contiguous(), mb.contiguous(), wb, alpha, out)
    return out.permute(0, 3, 1, 2)


@torch.no_grad()
def binary_conv2d(x: torch.Tensor, layer: BinaryConv2d) -> torch.Tensor:
    """``layer(x)`` (eval mode) as a bit-packed XNOR + popcount TVM kernel (NCHW float in
    and out): signs packed 32 channels per word, padding masked out."""
    stride, dil = binary_geometry(layer)
    if layer.training:
        raise AdderizeError("binary_conv2d runs a layer in eval mode: call layer.eval() first")
    signs = layer.pad_input(layer.binarize_input(x, 1))  # +-1, padding 0 (as the layer)
    y = packed_binary_conv(signs, *pack_binary_weight(layer), stride, dil)
    return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)
