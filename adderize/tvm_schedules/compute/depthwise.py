"""Depthwise adder computes (forward and input gradient), NHWC and NCHW."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adderize._errors import AdderizeError
from adderize.tvm_schedules.compute.common import lp_terms, out_size

__all__ = [
    "CHANNEL_BLOCK",
    "depthwise_forward_compute",
    "depthwise_forward_nchw_compute",
    "depthwise_grad_input_compute",
    "depthwise_grad_input_nchw_compute",
]


def depthwise_forward_compute(
    n: int, c: int, hp: int, wp: int, kh: int, kw: int, stride: int, dil: int, lp: bool = False
) -> list[Any]:
    """Depthwise adder conv, NHWC, channels vectorised:
    ``out[n, oh, ow, c] = -sum_{i, j} |x[n, oh*s + i*d, ow*s + j*d, c] - w[i, j, c]|``
    (to the power ``p``, a trailing run-time argument, with ``lp``).
    Shapes: x [N, Hp, Wp, C] (padded), w [kh, kw, C] -> out [N, OH, OW, C]."""
    from tvm import te

    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    p, dist, _ = lp_terms(lp)
    x = te.placeholder((n, hp, wp, c), name="x")
    w = te.placeholder((kh, kw, c), name="w")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    acc = te.compute(
        (n, oh, ow, c),
        lambda b, y, z, ch: te.sum(
            dist(x[b, y * stride + ri * dil, z * stride + rj * dil, ch] - w[ri, rj, ch]),
            axis=[ri, rj],
        ),
        name="acc",
    )
    out = te.compute(
        (n, oh, ow, c), lambda *i: -acc[i], name="out", tag="adder_depthwise_conv2d_nhwc"
    )
    return [x, w, out] + ([p] if lp else [])


def _plane_reader(
    x: Any, pads: tuple[int, int, int, int], stride: int, dil: int
) -> Callable[[Any, Any, Any, Any, Any], Any]:
    """``read(b, ch, y, z, rj)``: the input tap ``xp[b, ch, y, z * stride + rj * dil]`` of
    ``x`` [N, C, H, W] zero-padded by ``pads`` (top, bottom, left, right).

    With padding or a stride, the input goes through a stage ("pad", placed per channel
    plane by the schedule) that pads it and splits its columns into ``stride`` phases,
    ``planes[b, ch, y, ph, u] = xp[b, ch, y, u * stride + ph]``, so that the taps of
    consecutive output columns are consecutive in memory (vector loads, not gathers) at
    any stride."""
    from tvm import te, tirx

    pt, pb, pl, pr = pads
    if stride == 1 and not any(pads):
        return lambda b, ch, y, z, rj: x[b, ch, y, z + rj * dil]
    n, c, h, w = (int(d) for d in x.shape)
    wq = -(-(w + pl + pr) // stride)

    def value(b: Any, ch: Any, y: Any, ph: Any, u: Any) -> Any:
        col = u * stride + ph - pl
        inside = tirx.all(y >= pt, y < pt + h, col >= 0, col < w)
        return tirx.if_then_else(inside, x[b, ch, y - pt, col], tirx.const(0.0, "float32"))

    planes = te.compute((n, c, h + pt + pb, stride, wq), value, name="pad")

    def read(b: Any, ch: Any, y: Any, z: Any, rj: Any) -> Any:
        return planes[b, ch, y, (rj * dil) % stride, z + (rj * dil) // stride]

    return read


#: channels per block of the channel-vectorised depthwise forward
CHANNEL_BLOCK = 16


def _channel_blocks(
    x: Any,
    wt: Any,
    out_hw: tuple[int, int],
    pads: tuple[int, int, int, int],
    stride: int,
    dil: int,
    dist: Callable[[Any], Any],
) -> Any:
    """The depthwise forward on blocks of :data:`CHANNEL_BLOCK` channels of an NCHW input:
    per block, the input is zero-padded into a ``[Hp, Wp, 16]`` stage ("pad") and the
    weights into ``[kh, kw, 16]`` ("wv"), both placed per block by the schedule; the taps
    are then whole vectors at any stride, and the output is written back to NCHW planes.
    ``C`` must be a multiple of the block."""
    from tvm import te, tirx

    n, c, h, w = (int(d) for d in x.shape)
    _, kh, kw = (int(d) for d in wt.shape)
    pt, pb, pl, pr = pads
    blk = CHANNEL_BLOCK
    if c % blk:
        raise AdderizeError(f"the channels form needs channels in blocks of {blk}, got {c}")

    def value(b: Any, cb: Any, y: Any, u: Any, lane: Any) -> Any:
        inside = tirx.all(y >= pt, y < pt + h, u >= pl, u < pl + w)
        read = x[b, cb * blk + lane, y - pt, u - pl]
        return tirx.if_then_else(inside, read, tirx.const(0.0, "float32"))

    pad = te.compute((n, c // blk, h + pt + pb, w + pl + pr, blk), value, name="pad")
    wv = te.compute((c // blk, kh, kw, blk), lambda cb, i, j, q: wt[cb * blk + q, i, j], name="wv")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    acc = te.compute(
        (n, c // blk, *out_hw, blk),
        lambda b, cb, y, z, q: te.sum(
            dist(pad[b, cb, y * stride + ri * dil, z * stride + rj * dil, q] - wv[cb, ri, rj, q]),
            axis=[ri, rj],
        ),
        name="acc",
    )
    return te.compute(
        (n, c, *out_hw),
        lambda b, ch, y, z: -acc[b, ch // blk, y, z, ch % blk],
        name="out",
        tag="adder_depthwise_conv2d_nchw",
    )


def depthwise_forward_nchw_compute(
    n: int,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    stride: int,
    dil: int,
    pt: int,
    pb: int,
    pl: int,
    pr: int,
    lp: bool = False,
    form: str = "abs",
) -> list[Any]:
    """Depthwise adder conv on channel planes (output rows vectorised; no layout copy for
    an NCHW model), the zero padding (top, bottom, left, right) and the split of strided
    columns into phases done inside the kernel (:func:`_plane_reader`):
    x [N, C, H, W], w [C, kh, kw] -> out [N, C, OH, OW].

    ``form="channels"`` computes the same with channels vectorised instead
    (:func:`_channel_blocks`): small maps fill no vector along a row (a 7-wide row uses 7
    of 16 lanes)."""
    from tvm import te

    oh, ow = out_size(h + pt + pb, kh, stride, dil), out_size(w + pl + pr, kw, stride, dil)
    p, dist, _ = lp_terms(lp)
    x = te.placeholder((n, c, h, w), name="x")
    wt = te.placeholder((c, kh, kw), name="w")
    if form == "channels_fma" and not lp:  # |d| * one accumulated by FMAs (as dense "fma")
        one = te.placeholder((1,), name="one")
        term = lambda d: te.abs(d) * one[0]  # noqa: E731
        out = _channel_blocks(x, wt, (oh, ow), (pt, pb, pl, pr), stride, dil, term)
        return [x, wt, one, out]
    if form == "channels":
        out = _channel_blocks(x, wt, (oh, ow), (pt, pb, pl, pr), stride, dil, dist)
        return [x, wt, out] + ([p] if lp else [])
    if form != "abs":
        raise AdderizeError(
            f"depthwise forms are 'abs', 'channels' and 'channels_fma' (p = 1), not {form!r}"
        )
    read = _plane_reader(x, (pt, pb, pl, pr), stride, dil)
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    acc = te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, z: te.sum(
            dist(read(b, ch, y * stride + ri * dil, z, rj) - wt[ch, ri, rj]), axis=[ri, rj]
        ),
        name="acc",
    )
    out = te.compute(
        (n, c, oh, ow), lambda *i: -acc[i], name="out", tag="adder_depthwise_conv2d_nchw"
    )
    return [x, wt, out] + ([p] if lp else [])


def depthwise_grad_input_compute(
    n: int, c: int, hp: int, wp: int, kh: int, kw: int, dil: int, lp: bool = False
) -> list[Any]:
    """Input gradient of the depthwise adder conv (eq. 27), NHWC, as
    :func:`conv_grad_input_compute` with one channel per group. Shapes: xn [N, Hp, Wp, C],
    w [kh, kw, C], gd [N, Hp + d(kh-1), Wp + d(kw-1), C] (the output gradient spread
    stride apart) and, for p = 1, gs [N, Hp, Wp, C], the window sums of ``gd``
    (``sum g clip(w, x-1, x+1) - x sum g``: one op less per term)."""
    from tvm import te

    p, _, phi = lp_terms(lp)
    xn = te.placeholder((n, hp, wp, c), name="xn")
    w = te.placeholder((kh, kw, c), name="w")
    gd = te.placeholder((n, hp + dil * (kh - 1), wp + dil * (kw - 1), c), name="gd")
    gs = te.placeholder((n, hp, wp, c), name="gs")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")

    def term(b: Any, y: Any, z: Any, ch: Any) -> Any:
        xv = xn[b, y, z, ch]
        grad = gd[b, y + dil * (kh - 1) - ri * dil, z + dil * (kw - 1) - rj * dil, ch]
        step = phi(w[ri, rj, ch] - xv) if lp else te.min(te.max(w[ri, rj, ch], xv - 1.0), xv + 1.0)
        return te.sum(grad * step, axis=[ri, rj])

    acc = te.compute((n, hp, wp, c), term, name="acc")
    if lp:
        out = te.compute(
            (n, hp, wp, c),
            lambda *i: acc[i],
            name="out",
            tag="adder_depthwise_conv2d_grad_input_lp_nhwc",
        )
        return [xn, w, gd, out, p]
    out = te.compute(
        (n, hp, wp, c),
        lambda *i: acc[i] - xn[i] * gs[i],
        name="out",
        tag="adder_depthwise_conv2d_grad_input_nhwc",
    )
    return [xn, w, gd, gs, out]


def depthwise_grad_input_nchw_compute(
    n: int,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    dil: int,
    pt: int,
    pb: int,
    pl: int,
    pr: int,
    lp: bool = False,
) -> list[Any]:
    """Input gradient of :func:`depthwise_forward_nchw_compute` w.r.t. its unpadded input
    (the padding's own gradient is never computed):
    ``out[b, c, y, z] = sum_{i, j} gd[b, c, y + pt + d(kh-1) - i d, z + pl + d(kw-1) - j d]
    * HardTanh(w[c, i, j] - x[b, c, y, z])`` (``|d|^(p-1)`` signed for l_p), with ``gd``
    [N, C, H + pt + pb + d(kh-1), W + pl + pr + d(kw-1)] the output gradient spread stride
    apart. Shapes: x [N, C, H, W], w [C, kh, kw] -> out [N, C, H, W]."""
    from tvm import te

    p, _, phi = lp_terms(lp)
    top, left = dil * (kh - 1), dil * (kw - 1)
    x = te.placeholder((n, c, h, w), name="xn")
    wt = te.placeholder((c, kh, kw), name="w")
    gd = te.placeholder((n, c, h + pt + pb + top, w + pl + pr + left), name="gd")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")

    def term(b: Any, ch: Any, y: Any, z: Any) -> Any:
        xv = x[b, ch, y, z]
        grad = gd[b, ch, y + pt + top - ri * dil, z + pl + left - rj * dil]
        d = wt[ch, ri, rj] - xv
        step = phi(d) if lp else te.min(te.max(d, -1.0), 1.0)
        return te.sum(grad * step, axis=[ri, rj])

    acc = te.compute((n, c, h, w), term, name="acc")
    tag = "adder_depthwise_conv2d_grad_input" + ("_lp" if lp else "") + "_nchw"
    out = te.compute((n, c, h, w), lambda *i: acc[i], name="out", tag=tag)
    return [x, wt, gd, out] + ([p] if lp else [])
