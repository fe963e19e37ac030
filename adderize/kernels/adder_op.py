"""The adder op's torch-facing dispatch: ``-sum |X - W|^p`` and the papers' gradients.

What :mod:`adderize.nn.adder`'s layers call: the row layouts of a conv and a linear layer,
the route thresholds (direct TVM kernels, row kernels, matrix products; each measured),
the resolved inference calls, kept in :mod:`adderize.kernels.weight_cache` (one per weight,
keyed by the input and the weight's storage and version), the autograd function and its backward
routes, and the functional forms :func:`adder2d` and :func:`adder_linear`.

Forward: l1 distance (p = 1) for inference, l_p (1 <= p <= 2) while training with the
l2 -> l1 schedule (Universal Adder Neural Networks, eq. 26).
Backward: full-precision weight gradient ``X - W`` (eq. 23) and input gradient
``HardTanh(W - X)`` for p = 1, ``sign(W - X) |W - X|^(p-1)`` for p > 1 (eq. 27).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx

from adderize._errors import AdderizeError
from adderize.kernels import tvm_grad, tvm_l1, weight_cache
from adderize.kernels.l1 import (
    DEFAULT_MAX_TEMP_BYTES,
    l1_forward,
    l1_grad_a,
    l1_grad_b,
    use_direct_conv,
)
from adderize.kernels.rows import ConvRows, LinearRows, conv_layout

__all__ = [
    "DEPTHWISE_CONV_WEIGHT_GRAD_MAX_TAPS",
    "POINTWISE_MM_MIN_HW",
    "ROWS_BACKWARD_MAX",
    "adder2d",
    "adder_linear",
    "check_p",
    "input_key",
    "kept_call",
    "records",
]


#: up to this many output positions (batch x OH x OW) a direct conv's backward works on its
#: rows (the unfolded input, made once): the weight gradient is one matrix product, the
#: input gradient (ungrouped, p = 1) the rows kernel folded back. Not depthwise: its
#: per-channel products are tiny (0.6x the conv weight gradient). Zen 4, batch 1: weight
#: gradient of 256 -> 512 3x3 s2 @14, layer fwd+bwd 12.5 -> 7.7 ms; input gradient of
#: 512 -> 512 3x3 @7, 8.3 -> 4.2 ms, 256 -> 512 3x3 s2 @14, 6.6 -> 2.1 ms (the direct
#: kernels' 7-wide rows tile poorly); 256 -> 256 3x3 @14 (196 positions), 3.1 -> 5.2 ms
ROWS_BACKWARD_MAX = 128
#: a pointwise conv's weight gradient is a (batched) matrix product on NCHW memory at batch
#: 1 or from this many positions per map, a conv weight gradient (oneDNN) below
POINTWISE_MM_MIN_HW = 28 * 28
#: a depthwise conv with more taps than this takes its weight gradient as a conv forward
#: (:func:`_depthwise_weight_grad`): oneDNN's depthwise weight gradient has a fast kernel
#: for 3x3 only. Zen 4, 5x5: 240 ch @28 batch 1, 5.1 -> 0.28 ms, batch 32, 153 -> 11 ms;
#: 144 ch s2 @56 batch 1, 5.7 -> 0.8 ms; 3x3 (kept on oneDNN): 144 ch @56, 0.22 vs 0.38 ms
DEPTHWISE_CONV_WEIGHT_GRAD_MAX_TAPS = 9
#: the weight cache's tag of a resolved direct-kernel call (see _forward)
PLAN = "plan"


def input_key(x: torch.Tensor, weight: torch.Tensor) -> tuple[Any, ...]:
    """What a resolved kernel call depends on besides the layer's geometry: the input's
    shape, memory format, dtype and device, and the weight's storage and version counter
    (in-place edits through ``.data`` bypass the counter and are not seen)."""
    return (x.shape, x.is_contiguous(), x.dtype, x.device, *weight_cache.weight_state(weight))


def _plan_key(
    x: torch.Tensor,
    weight: torch.Tensor,
    layout: ConvRows,
    p: float,
    pads: tvm_l1.Pads,
    backend: str,
) -> tuple[Any, ...]:
    return (*input_key(x, weight), p, pads, backend, layout)


def records(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a call records autograd history (else the forward alone runs)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    layout: ConvRows | LinearRows,
    p: float,
    max_temp_bytes: int,
    backend: str,
    pads: tvm_l1.Pads,
    keep: bool,
) -> tuple[torch.Tensor, bool]:
    """The adder forward (no autograd record) and whether it ran on the direct conv
    kernels: what :class:`_AdderFunction` records, and all an inference call needs.

    With ``keep`` (inference: no gradient is recorded) the direct kernel's resolved call
    (:func:`~adderize.kernels.tvm_l1.forward_plan`, the weight's re-layout in it) is kept
    per weight and reused while the input's shape and the weight's version are those it
    was made for; a training step keeps nothing (the optimizer changes the weight)."""
    # inputs arrive in float32 (see _compute_dtype); helper ops must stay there too
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    conv = isinstance(layout, ConvRows)
    key: tuple[Any, ...] | None = None
    if keep and conv and not autocast:
        key = _plan_key(x, weight, layout, p, pads, backend)
        hit = weight_cache.get(weight, PLAN, key)
        if hit is not None:
            return hit(x), True
    direct = conv and use_direct_conv(
        x, weight, layout.stride, layout.dilation, layout.groups, backend
    )
    if direct and key is not None:
        plan = tvm_l1.forward_plan(
            x, weight, layout.stride[0], layout.dilation[0], layout.groups, p, pads
        )
        if plan is not None:  # one per weight: another key replaces it
            return weight_cache.put(weight, PLAN, key, plan)(x), True
    with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
        if direct:
            out = tvm_l1.conv_forward(
                x, weight, layout.stride[0], layout.dilation[0], layout.groups, p, pads, keep
            )
        else:
            xp = F.pad(x, pads) if any(pads) else x  # a temporary: the backward pads again
            rows = l1_forward(
                layout.rows(xp), layout.weight_rows(weight), p, max_temp_bytes, backend
            )
            out = layout.rows_to_output(rows, xp.shape)
    return out, direct


class _AdderFunction(torch.autograd.Function):
    """Adder forward/backward for any layout. Saves the (small) input, not its unfolding."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        layout: ConvRows | LinearRows,
        p: float,
        max_temp_bytes: int,
        backend: str,
        pads: tvm_l1.Pads = tvm_l1.NO_PADS,
    ) -> torch.Tensor:
        out, direct = _forward(x, weight, layout, p, max_temp_bytes, backend, pads, False)
        ctx.save_for_backward(x, weight)
        ctx.layout, ctx.p, ctx.max_temp_bytes = layout, p, max_temp_bytes  # type: ignore[attr-defined]
        ctx.backend, ctx.direct, ctx.pads = backend, direct, pads  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        layout = ctx.layout
        if ctx.direct:
            return (*_direct_conv_backward(ctx, x, weight, grad_out), None, None, None, None, None)
        pads = ctx.pads
        xp = F.pad(x, pads) if any(pads) else x  # the input is saved unpadded
        a = layout.rows(xp)  # recomputed: cheaper than keeping K x M values alive
        b = layout.weight_rows(weight)
        g = layout.output_to_rows(grad_out.contiguous())
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_a = l1_grad_a(a, b, g, ctx.p, ctx.max_temp_bytes, ctx.backend)
            grad_x = layout.rows_to_input(grad_a, xp.shape)
            if any(pads):
                left, _, top, _ = pads
                grad_x = grad_x[..., top : top + x.shape[-2], left : left + x.shape[-1]]
        if ctx.needs_input_grad[1]:
            grad_w = l1_grad_b(a, b, g).reshape(weight.shape)
        return grad_x, grad_w, None, None, None, None, None


def _direct_conv_backward(
    ctx: Any, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Eq. 27 input gradient on the direct TVM kernel; eq. 23 weight gradient
    ``sum G (X - W)`` by the cheapest of three routes, each minus ``W sum G``: a (batched)
    matrix product on the NCHW memory of a pointwise conv (:data:`POINTWISE_MM_MIN_HW`),
    one matrix product on the rows where the output has at most
    :data:`ROWS_BACKWARD_MAX` positions (the input gradient then comes from the same
    rows), else a conv weight gradient (oneDNN; a depthwise conv of more than
    :data:`DEPTHWISE_CONV_WEIGHT_GRAD_MAX_TAPS` taps: :func:`_depthwise_weight_grad`). A
    pointwise conv with one output position (batch-1 squeeze-excite) takes both gradients
    from one serial kernel (:func:`~adderize.kernels.tvm_l1.one_position`)."""
    layout = ctx.layout
    n, t, oh, ow = grad_out.shape
    if tvm_l1.one_position(x, weight, layout.stride[0], layout.groups, ctx.p, ctx.pads):
        gx, gw = tvm_grad.one_position_backward(x, weight, grad_out)
        return gx if ctx.needs_input_grad[0] else None, gw if ctx.needs_input_grad[1] else None
    grad_x = grad_w = None
    few = n * oh * ow <= ROWS_BACKWARD_MAX and weight.shape[1] > 1
    if few:  # both gradients from one unfold of the input (see ROWS_BACKWARD_MAX)
        xp = F.pad(x, ctx.pads) if any(ctx.pads) else x
        a, b = layout.rows(xp), layout.weight_rows(weight)
        g = layout.output_to_rows(grad_out)
    if ctx.needs_input_grad[0]:
        if few and layout.groups == 1 and ctx.p == 1.0 and tvm_l1.supported(a, b):
            grad_x = layout.rows_to_input(tvm_l1.grad_a(a, b, g), xp.shape)
            if any(ctx.pads):
                left, _, top, _ = ctx.pads
                grad_x = grad_x[..., top : top + x.shape[-2], left : left + x.shape[-1]]
        else:
            grad_x = tvm_grad.conv_grad_input(
                x,
                weight,
                grad_out,
                layout.stride[0],
                layout.dilation[0],
                layout.groups,
                ctx.p,
                ctx.pads,
            )
    plain = layout.pointwise and layout.groups == 1 and not any(ctx.pads)
    big_kernel = weight.shape[-2] * weight.shape[-1] > DEPTHWISE_CONV_WEIGHT_GRAD_MAX_TAPS
    if ctx.needs_input_grad[1] and few:
        grad_w = l1_grad_b(a, b, g).reshape(weight.shape)
    elif ctx.needs_input_grad[1] and plain and (n == 1 or oh * ow >= POINTWISE_MM_MIN_HW):
        # a pointwise conv on NCHW memory, no copy: G [N, T, HW] times X [N, C, HW]^T,
        # summed over the batch. Weight gradient, Zen 4: 16 -> 96 @112, batch 32, 59 ->
        # 15 ms; batch 1, 0.38 -> 0.27 ms (at batch 32 and 14x14 or less, oneDNN's is
        # as fast or faster)
        g3, x3 = grad_out.reshape(n, t, -1), x.reshape(n, x.shape[1], -1)
        gw = torch.mm(g3[0], x3[0].t()) if n == 1 else torch.bmm(g3, x3.transpose(1, 2)).sum(0)
        gw -= weight.reshape(gw.shape) * g3.sum((0, 2)).unsqueeze(1)
        grad_w = gw.reshape(weight.shape)
    elif ctx.needs_input_grad[1] and weight.shape[1] == 1 and layout.groups == t and big_kernel:
        grad_w = _depthwise_weight_grad(x, grad_out, layout, ctx.pads, weight.shape[-2:])
        grad_w -= weight * grad_out.sum((0, 2, 3)).reshape(-1, 1, 1, 1)
    elif ctx.needs_input_grad[1]:
        left, right, top, bottom = ctx.pads
        padding: tuple[int, int] = (0, 0)
        if (left, top) == (right, bottom):  # symmetric: the conv pads, no padded copy of x
            padding = (top, left)
        else:
            x = F.pad(x, ctx.pads)
        grad_w = torch.nn.grad.conv2d_weight(
            x, weight.shape, grad_out, layout.stride, padding, layout.dilation, layout.groups
        )
        grad_w -= weight * grad_out.sum((0, 2, 3)).reshape(-1, 1, 1, 1)
    return grad_x, grad_w


def _depthwise_weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    layout: ConvRows,
    pads: tvm_l1.Pads,
    kernel: tuple[int, ...],
) -> torch.Tensor:
    """``sum_n,o G[n, c, o] X[n, c, o * stride + k * dilation]`` of a depthwise conv as a
    depthwise conv of the padded input with ``G`` as its kernels: one group per (sample,
    channel), dilated by the stride and strided by the dilation, summed over the batch."""
    n, c, oh, ow = grad_out.shape
    xp = F.pad(x, pads) if any(pads) else x
    out = F.conv2d(
        xp.reshape(1, n * c, *xp.shape[-2:]),
        grad_out.reshape(n * c, 1, oh, ow),
        stride=layout.dilation,
        dilation=layout.stride,
        groups=n * c,
    )
    out = out[..., : kernel[0], : kernel[1]].reshape(n, c, 1, *kernel)
    return out[0] if n == 1 else out.sum(0)


def check_p(p: float) -> float:
    p = float(p)
    if not 1.0 <= p <= 2.0:
        raise AdderizeError(f"p must be in [1, 2] (l1 ... l2 AdderNet), got {p}")
    return p


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # bf16/fp16 (autocast) inputs are computed in the weight's precision: cdist and the
    # distance sums lose too much in half precision.
    return torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _apply(
    x: torch.Tensor,
    weight: torch.Tensor,
    layout: ConvRows | LinearRows,
    p: float,
    max_temp_bytes: int,
    backend: str,
    pads: tvm_l1.Pads = tvm_l1.NO_PADS,
) -> torch.Tensor:
    """:class:`_AdderFunction` where a gradient is wanted; else the forward alone (no
    autograd record: a few microseconds, as much as the kernel of a small layer)."""
    if records(x, weight):
        return _AdderFunction.apply(x, weight, layout, p, max_temp_bytes, backend, pads)
    return _forward(x, weight, layout, p, max_temp_bytes, backend, pads, True)[0]


def adder2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    p: float = 1.0,
    max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES,
    backend: str = "auto",
    padding: tvm_l1.Pads = tvm_l1.NO_PADS,
) -> torch.Tensor:
    """Adder convolution of an NCHW ``x`` with an OIHW ``weight``; ``padding``: zeros
    around ``x`` as ``F.pad`` takes them (left, right, top, bottom), fused into the kernel
    where it can be (depthwise, NCHW), else padded in a temporary of the forward and of the
    backward."""
    layout = conv_layout(weight, stride, dilation, groups)
    dtype = _compute_dtype(x, weight)
    x, weight = _cast(x, dtype), _cast(weight, dtype)
    # every kernel takes the input unpadded (padded inside the kernel or in a temporary),
    # so the autograd record keeps no padded copy of it
    out = _apply(x, weight, layout, check_p(p), max_temp_bytes, backend, tuple(padding))
    if bias is not None:
        out = out + bias.to(dtype).reshape(1, -1, 1, 1)
    return out


def adder_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    p: float = 1.0,
    max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES,
    backend: str = "auto",
) -> torch.Tensor:
    """``out[..., t] = -sum_k |x[..., k] - weight[t, k]|^p (+ bias[t])``."""
    dtype = _compute_dtype(x, weight)
    out = _apply(
        _cast(x, dtype), _cast(weight, dtype), LinearRows(), check_p(p), max_temp_bytes, backend
    )
    if bias is not None:
        out = out + bias.to(dtype)
    return out


def kept_call(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    p: float,
    pads: tvm_l1.Pads,
    backend: str,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The kept direct-kernel call of an inference :func:`adder2d` on ``x`` with these
    arguments just made, if one was kept: the layer calls it directly next time
    (:class:`adderize.nn.Adder2d`'s fast path)."""
    if records(x, weight) or torch.is_autocast_enabled("cpu"):
        return None
    layout = conv_layout(weight, stride, dilation, groups)
    return weight_cache.get(weight, PLAN, _plan_key(x, weight, layout, check_p(p), pads, backend))
