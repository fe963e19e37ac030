"""Data-aware rounding of shift layers' weights to powers of two (GPTQ's error feedback).

A shift layer rounds each weight on its own to ``sign(w) * 2^k`` (:mod:`adderize.nn.shift`):
a relative error of up to 41% per weight, and the errors of one output add up. Fed the
layer's inputs, the rounding can do better (Frantar et al., "GPTQ", ICLR 2023): weights are
rounded one input column at a time, and each column's error moves onto the columns not yet
rounded in the proportion the inputs' second moments ``H = X X^T`` give, so that the layer's
*output* on those inputs changes least. :func:`round_shift_weights` does this for every
blended shift layer of a model converted with ``preserve=True``:

* ``H`` per layer (per group: a depthwise conv has one ``k x k`` block per channel) from the
  float model's inputs to the layer, all layers in one pass per batch, no labels;
* each output channel first gets the scale ``s`` in ``[1, 2)`` (eight steps) under which its
  weights round best (``s`` is a per-channel factor that :func:`~adderize.train.anneal.calibrate`
  fits and the fold moves into the BatchNorm: nothing is multiplied in the op);
* the weights of ``W / s`` are rounded to the nearest power of two in the layer's exponent
  range (nearest in value, not in ``log2``), with the error feedback;
* the op's weight becomes the rounded values (exact powers of two, which the layer's own
  rounding keeps), the float weight stays the original.

Measured on ImageNet EfficientNet-Lite0 (``benchmarks/pretrained_lite.py``): docs/measurements.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adderize.nn.shift import ShiftConv2d, ShiftLinear
from adderize.train.anneal import as_float, blend_layers, hooked

__all__ = ["nearest_power_of_two", "round_shift_weights"]

#: relative diagonal damping of ``H`` (GPTQ's ``percdamp``)
DAMP = 0.01
#: columns rounded between two matmul updates of the rest (GPTQ's lazy batch)
BLOCK = 128
#: the per-channel scales tried: ``2^(i / SCALES)``
SCALES = 8


def nearest_power_of_two(w: torch.Tensor, min_exp: int, max_exp: int) -> torch.Tensor:
    """``sign(w) * 2^k`` nearest to ``w`` in value, ``k`` in ``[min_exp, max_exp]``; exact
    zeros stay zero."""
    a = w.abs()
    lo = torch.floor(torch.log2(a.clamp_min(2.0 ** (min_exp - 1)))).clamp_(min_exp, max_exp)
    down, up = torch.exp2(lo), torch.exp2((lo + 1).clamp_(max=max_exp))
    return torch.sign(w) * torch.where(up - a < a - down, up, down)


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``[groups, d, samples]``: each output of group ``g`` is
    ``W[g] @ columns[g]`` (conv patches unfolded; ``d`` weights per output channel)."""
    if isinstance(layer, ShiftLinear):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    assert isinstance(layer, ShiftConv2d)
    if x.dim() == 3:  # Conv1d runs as [N, C, 1, L]
        x = x.unsqueeze(2)
    patches = F.unfold(
        layer.pad_input(x), layer.kernel_size, dilation=layer.dilation, stride=layer.stride
    )  # [N, C_in * kh * kw, L], the rows of one group adjacent
    n, rows, length = patches.shape
    g = layer.groups
    return patches.view(n, g, rows // g, length).permute(1, 2, 0, 3).reshape(g, rows // g, -1)


def _best_scale(w: torch.Tensor, min_exp: int, max_exp: int) -> torch.Tensor:
    """Per output row of ``w [G, O, d]``, the scale ``2^(i / SCALES)`` whose rounding of
    ``w / s`` leaves the least squared error; ``[G, O, 1]``."""
    best = torch.ones(*w.shape[:2], 1, dtype=w.dtype)
    err = torch.full_like(best, math.inf)
    for i in range(SCALES):
        s = 2.0 ** (i / SCALES)
        e = (nearest_power_of_two(w / s, min_exp, max_exp) * s - w).square().sum(-1, keepdim=True)
        better = e < err
        best = torch.where(better, torch.full_like(best, s), best)
        err = torch.where(better, e, err)
    return best


def _gptq(w: torch.Tensor, h: torch.Tensor, min_exp: int, max_exp: int) -> torch.Tensor:
    """Round ``w [G, O, d]`` to powers of two (of ``w / s``, ``s`` per row) column by column
    with GPTQ's error feedback on ``h [G, d, d]``; returns the powers of two."""
    w, h = w.double().clone(), h.double().clone()
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0  # inputs that are always zero
    idx = torch.arange(h.shape[-1])
    h[:, idx, idx] += DAMP * torch.diagonal(h, dim1=1, dim2=2).mean(-1, keepdim=True) + dead
    w.masked_fill_(dead.unsqueeze(1), 0.0)
    scale = _best_scale(w, min_exp, max_exp)
    w = w / scale
    # the upper Cholesky factor of H^-1 (GPTQ's formulation of the error feedback)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.empty_like(w)
    d = w.shape[-1]
    for a in range(0, d, BLOCK):  # GPTQ's lazy batches: the rest updated by one matmul
        b = min(a + BLOCK, d)
        errs = torch.empty_like(w[..., a:b])
        for j in range(a, b):
            q[..., j] = nearest_power_of_two(w[..., j], min_exp, max_exp)
            err = (w[..., j] - q[..., j]) / u[:, j, j].unsqueeze(-1)  # [G, O]
            w[..., j + 1 : b] -= err.unsqueeze(-1) * u[:, j, j + 1 : b].unsqueeze(1)
            errs[..., j - a] = err
        w[..., b:] -= torch.bmm(errs, u[:, a:b, b:])
    return q.float()


def _output_error(v: torch.Tensor, h: torch.Tensor, rows: torch.Tensor) -> float:
    """The squared output error of weights ``v`` against ``rows`` (both ``[G, O, d]``) on
    inputs of second moments ``h``, up to the per-channel scale that calibrate fits."""
    v, h, rows = v.double(), h.double(), rows.double()
    hv = torch.bmm(v, h)
    s = (hv * rows).sum(-1) / (hv * v).sum(-1).clamp_min(1e-30)
    e = rows - s.unsqueeze(-1) * v
    return float((torch.bmm(e, h) * e).sum())


def _eligible(layer: nn.Module) -> bool:
    return isinstance(layer, (ShiftConv2d, ShiftLinear)) and (
        getattr(layer, "weight_std_eps", None) is None
    )


def round_shift_weights(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Round every blended shift layer's weights with error feedback on ``batches`` (module
    docstring). Call after the conversion (``preserve=True``) and before
    :func:`~adderize.train.anneal.calibrate`. Returns ``{layer: output error}``: the
    squared error of the rounded layer's output, relative to the plain rounding's, on the
    collected inputs (below 1: better than rounding each weight on its own)."""
    layers = {n: layer for n, (layer, _) in blend_layers(model).items() if _eligible(layer)}
    if not layers:
        return {}
    hess: dict[str, torch.Tensor] = {}

    def hook(name: str, layer: nn.Module) -> Any:
        def fn(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            cols = _columns(layer, args[0].detach().float())
            h = torch.bmm(cols, cols.transpose(1, 2))
            hess[name] = hess[name] + h if name in hess else h

        return fn

    with as_float(layers.values()), hooked(model, {m: hook(n, m) for n, m in layers.items()}):
        for x in batches:
            model(x)
    out = {}
    for name, layer in layers.items():
        if name not in hess:
            continue
        if layer.float_weight is None:
            layer.float_weight = layer.weight.detach().clone()
        w = layer.float_weight
        g = hess[name].shape[0]
        rows = w.reshape(g, w.shape[0] // g, -1)
        q = _gptq(rows, hess[name], layer.min_exp, layer.max_exp)
        plain = nearest_power_of_two(rows, layer.min_exp, layer.max_exp)
        h = hess[name]
        out[name] = _output_error(q, h, rows) / max(_output_error(plain, h, rows), 1e-30)
        with torch.no_grad():
            layer.weight.copy_(q.reshape_as(w))
    return out
