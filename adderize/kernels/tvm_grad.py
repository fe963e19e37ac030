"""The TVM adder kernels as PyTorch sees them, input gradients (eq. 27: ``HardTanh(W - X)``
at p = 1, ``sign(W - X)|W - X|^(p-1)`` for l_p) of the direct dense and depthwise
convolutions of :mod:`adderize.kernels.tvm_l1`, and the one-position conv's both
gradients. Strided convs are computed per output phase (a sub-pixel transposed
convolution), depthwise NCHW ones on channel planes, pointwise NCHW ones with positions
vectorised; the rest on an NHWC temporary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adderize.kernels.tvm_l1 import (
    NO_PADS,
    Pads,
    _depthwise,
    _narrow,
    _pad_channels,
    _padded_weight,
    _transposed,
    pads_fused,
    pointwise_nchw,
)
from adderize.tvm_schedules.build import kernel
from adderize.tvm_schedules.kinds import Workload

__all__ = ["conv_grad_input", "one_position_backward"]


def one_position_backward(
    x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input gradient, weight gradient) of a :func:`one_position` conv: eqs. 27 (p = 1)
    and 23, in one kernel call."""
    t, c = weight.shape[:2]
    grad_x, grad_w = x.new_empty(x.shape), weight.new_empty(weight.shape)
    kernel(Workload.of("one_position_backward", t, c))(
        x.reshape(c).contiguous(),
        weight.detach().reshape(t, c).contiguous(),
        grad_out.reshape(t).contiguous(),  # an expanded gradient (of a sum) has stride 0
        grad_w.view(t, c),
        grad_x.view(c),
    )
    return grad_x, grad_w


def conv_grad_input(
    xp: torch.Tensor,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    stride: int,
    dil: int,
    groups: int,
    p: float = 1.0,
    pads: Pads = NO_PADS,
) -> torch.Tensor:
    """Eq. 27 input gradient of :func:`conv_forward` w.r.t. its input (NCHW shape,
    channels-last memory): w.r.t. the unpadded input where ``pads`` are given, padded
    inside the depthwise plane kernel or in a temporary here.

    With stride ``s > 1`` (and no dilation) the gradient is computed per output phase, as
    in a sub-pixel (transposed) convolution: the input positions ``(ry + s u, rx + s v)``
    receive only the taps ``(ry + s a, rx + s b)``, a stride-1 correlation of the output
    gradient with that slice of the kernel. No work is spent on the zeros a
    stride-dilated gradient would hold (3/4 of the terms at stride 2).
    """
    if pads_fused(xp, weight, groups):
        return _depthwise_grad_input_nchw(xp, weight, grad_out, stride, dil, p, pads)
    n, c, h, w = xp.shape
    t = weight.shape[0]
    if pointwise_nchw(xp, weight, stride, groups, p, pads):
        # pointwise on NCHW memory, no layout copies: 16 -> 96 @112 fwd+bwd 2.42x -> 1.22x
        # oneDNN at batch 1, 0.88x -> 0.53x at batch 32 (Zen 4)
        g = grad_out.contiguous().view(n, t, h * w)
        out = xp.new_empty(n, c, h * w)
        fn = kernel(Workload.of("pointwise_grad_input_nchw", n, c, h * w, t))
        fn(xp.view(n, c, h * w), weight.detach().view(t, c), g, g.sum(1), out)
        return out.view(n, c, h, w)
    if _narrow(weight, groups):
        wpad = _padded_weight(weight)
        t, c = wpad.shape[:2]
        gpad = _pad_channels(grad_out, t)
        grad = conv_grad_input(_pad_channels(xp, c), wpad, gpad, stride, dil, 1, p, pads)
        return grad[:, : weight.shape[1]]
    # w.r.t. a padded NHWC temporary, cropped: the caller keeps no padded copy
    left, right, top, bottom = pads
    hp, wp = h + top + bottom, w + left + right
    kh, kw = weight.shape[-2:]
    xn = _framed(xp.permute(0, 2, 3, 1), (n, hp, wp, c), top, left)
    g = grad_out.permute(0, 2, 3, 1)
    if stride == 1 or dil != 1:
        out = _grad_input_nhwc(xn, weight, g, stride, dil, groups, p)
    else:
        out = xn.new_zeros(n, hp, wp, c)  # phases no tap reaches (1x1, stride 2) stay 0
        for ry in range(min(stride, kh)):
            for rx in range(min(stride, kw)):
                x_sub = xn[:, ry::stride, rx::stride].contiguous()
                w_sub = weight[:, :, ry::stride, rx::stride]
                phase = _grad_input_nhwc(x_sub, w_sub, g, 1, 1, groups, p)
                out[:, ry::stride, rx::stride] = phase
    return out[:, top : top + h, left : left + w].permute(0, 3, 1, 2)


def _framed(
    inner: torch.Tensor, shape: tuple[int, int, int, int], top: int, left: int
) -> torch.Tensor:
    """A new NHWC tensor of ``shape`` holding ``inner`` [N, H, W, C] at (top, left) and
    zeros around it; only the frame is zeroed: a padded copy in one pass, not a padded
    NCHW copy and then its NHWC copy (64 -> 64 3x3 @56, batch 32, input gradient: 110 ->
    102 ms; Zen 4)."""
    n, hp, wp, c = shape
    h, w = inner.shape[1:3]
    out = inner.new_empty(n, hp, wp, c)
    frame = (out[:, :top], out[:, top + h :], out[:, top : top + h, :left])
    for side in (*frame, out[:, top : top + h, left + w :]):
        if side.numel():
            side.zero_()
    out[:, top : top + h, left : left + w] = inner
    return out


def _stride_dilated(
    g: torch.Tensor, hp: int, wp: int, top: int, left: int, stride: int
) -> torch.Tensor:
    """The output gradient ``g`` [N, T, OH, OW] spread ``stride`` apart into a zero
    [N, T, hp + top, wp + left] at offset (top, left): the input gradient is then a stride-1
    correlation of it (rows beyond the input's reach are dropped)."""
    n, t = g.shape[:2]
    oh, ow = min(g.shape[2], -(-hp // stride)), min(g.shape[3], -(-wp // stride))
    if stride == 1 and top == left == 0 and (oh, ow) == (hp, wp):
        return g.contiguous()
    gd = g.new_zeros(n, t, hp + top, wp + left)
    gd[
        ...,
        top : top + (oh - 1) * stride + 1 : stride,
        left : left + (ow - 1) * stride + 1 : stride,
    ] = g[..., :oh, :ow]
    return gd


def _depthwise_grad_input_nchw(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    stride: int,
    dil: int,
    p: float,
    pads: Pads,
) -> torch.Tensor:
    """The plane kernel's input gradient of a depthwise conv w.r.t. its unpadded NCHW input
    (contiguous NCHW out). Strides go through the zero-spread gradient (depthwise work is
    small)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    left, right, top, bottom = pads
    hp, wp = h + top + bottom, w + left + right
    gd = _stride_dilated(grad_out, hp, wp, dil * (kh - 1), dil * (kw - 1), stride)
    out = x.new_empty(n, c, h, w)
    lp, extra = p != 1.0, (() if p == 1.0 else (float(p),))
    shape = (n, c, h, w, kh, kw, dil, top, bottom, left, right)
    fn = kernel(Workload.of("depthwise_grad_input_nchw", *shape, lp=lp))
    fn(x, weight.detach().reshape(c, kh, kw).contiguous(), gd, out, *extra)
    return out


def _grad_input_nhwc(
    xn: torch.Tensor,
    weight: torch.Tensor,
    g: torch.Tensor,
    stride: int,
    dil: int,
    groups: int,
    p: float,
) -> torch.Tensor:
    """The input-gradient kernel on an NHWC input ``xn`` [N, H, W, C] and an NHWC output
    gradient ``g`` [N, OH, OW, T] (rows beyond the input's reach are ignored); returns
    [N, H, W, C]. The weight's re-layout is made here each time: a backward's weight is
    updated right after it (see :func:`_prepared`)."""
    n, hp, wp, c = xn.shape
    t, cg, kh, kw = weight.shape
    tg = t // groups
    top, left = dil * (kh - 1), dil * (kw - 1)
    oh = min(g.shape[1], -(-hp // stride))
    ow = min(g.shape[2], -(-wp // stride))
    if top == left == 0 and stride == 1 and (oh, ow) == (hp, wp):  # 1x1: g as it is
        gd = g.contiguous()
    elif stride == 1:
        gd = _framed(g[:, :oh, :ow], (n, hp + top, wp + left, t), top, left)
    else:
        gd = g.new_zeros(n, hp + top, wp + left, t)
        gd[
            :,
            top : top + (oh - 1) * stride + 1 : stride,
            left : left + (ow - 1) * stride + 1 : stride,
        ] = g[:, :oh, :ow]
    dw = _depthwise(weight, groups)
    if dw:  # [kh, kw, C]
        wt = _transposed(weight, 1, kh * kw).reshape(kh, kw, t)
    else:  # [G, kh, kw, Tg, Cg]
        wt = _transposed(weight, groups, kh * kw).reshape(groups, kh, kw, tg, cg)
    if p == 1.0:  # HardTanh form: needs the window sums of the gradient
        gsum = gd.view(n, hp + top, wp + left, groups, tg).sum(-1)
        if kh == kw == 1:  # a 1x1 window's sum is the value itself
            gs = gsum
        else:
            ones = weight.new_ones(groups, 1, kh, kw)
            gs = F.conv2d(gsum.permute(0, 3, 1, 2), ones, dilation=dil, groups=groups)
            gs = gs.permute(0, 2, 3, 1).contiguous()
        lp, args = False, (gs,)
    else:
        lp, args = True, ()
    extra = () if p == 1.0 else (float(p),)
    if dw:
        out = xn.new_empty(n, hp, wp, c)
        fn = kernel(Workload.of("depthwise_grad_input", n, c, hp, wp, kh, kw, dil, lp=lp))
        fn(xn, wt, gd, *args, out, *extra)
        return out
    out = xn.new_empty(n, hp, wp, groups, cg)
    fn = kernel(Workload.of("conv_grad_input", n, c, hp, wp, t, kh, kw, dil, groups, lp=lp))
    fn(xn, wt, gd, *args, out, *extra)
    return out.view(n, hp, wp, c)
