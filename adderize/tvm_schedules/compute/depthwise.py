"""Depthwise adder computes (forward and input gradient), NHWC and NCHW."""

from __future__ import annotations

from typing import Any

from adderize.tvm_schedules.compute.common import lp_terms, out_size

__all__ = ["depthwise_forward_compute", "depthwise_grad_input_compute"]


def depthwise_forward_compute(
    n: int,
    c: int,
    hp: int,
    wp: int,
    kh: int,
    kw: int,
    stride: int,
    dil: int,
    lp: bool = False,
    nchw: bool = False,
) -> list[Any]:
    """Depthwise adder conv:
    ``out[n, oh, ow, c] = -sum_{i, j} |x[n, oh*s + i*d, ow*s + j*d, c] - w[i, j, c]|``
    (to the power ``p``, a trailing run-time argument, with ``lp``).

    NHWC (channels vectorised): x [N, Hp, Wp, C], w [kh, kw, C] -> out [N, OH, OW, C].
    With ``nchw`` (output columns vectorised, each channel's plane on its own, no layout
    copy for an NCHW model): x [N, C, Hp, Wp], w [C, kh, kw] -> out [N, C, OH, OW]."""
    from tvm import te

    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    p, dist, _ = lp_terms(lp)
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    if nchw:
        x = te.placeholder((n, c, hp, wp), name="x")
        w = te.placeholder((c, kh, kw), name="w")

        def term(b: Any, ch: Any, y: Any, z: Any) -> Any:
            return x[b, ch, y * stride + ri * dil, z * stride + rj * dil] - w[ch, ri, rj]

        shape = (n, c, oh, ow)
    else:
        x = te.placeholder((n, hp, wp, c), name="x")
        w = te.placeholder((kh, kw, c), name="w")

        def term(b: Any, y: Any, z: Any, ch: Any) -> Any:  # type: ignore[misc]
            return x[b, y * stride + ri * dil, z * stride + rj * dil, ch] - w[ri, rj, ch]

        shape = (n, oh, ow, c)
    acc = te.compute(shape, lambda *i: te.sum(dist(term(*i)), axis=[ri, rj]), name="acc")
    out = te.compute(
        shape,
        lambda *i: -acc[i],
        name="out",
        tag="adder_depthwise_conv2d_" + ("nchw" if nchw else "nhwc"),
    )
    return [x, w, out] + ([p] if lp else [])


def depthwise_grad_input_compute(
    n: int,
    c: int,
    hp: int,
    wp: int,
    kh: int,
    kw: int,
    dil: int,
    lp: bool = False,
    nchw: bool = False,
) -> list[Any]:
    """Input gradient of the depthwise adder conv (eq. 27), as
    :func:`conv_grad_input_compute` with one channel per group.

    NHWC: xn [N, Hp, Wp, C], w [kh, kw, C], gd [N, Hp + d(kh-1), Wp + d(kw-1), C] and, for
    p = 1, the window sums of ``gd`` gs [N, Hp, Wp, C] (``sum g clip(w, x-1, x+1) - x sum g``:
    one op less per term). With ``nchw``: xn [N, C, Hp, Wp], w [C, kh, kw], gd [N, C, ...],
    and p = 1 as ``sum g clip(w - x, -1, 1)`` (no window sums to compute first)."""
    from tvm import te

    p, _, phi = lp_terms(lp)
    top, left = dil * (kh - 1), dil * (kw - 1)
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    if nchw:
        shape = (n, c, hp, wp)
        xn = te.placeholder(shape, name="xn")
        w = te.placeholder((c, kh, kw), name="w")
        gd = te.placeholder((n, c, hp + top, wp + left), name="gd")

        def parts(b: Any, ch: Any, y: Any, z: Any) -> tuple[Any, Any, Any]:
            grad = gd[b, ch, y + top - ri * dil, z + left - rj * dil]
            return xn[b, ch, y, z], w[ch, ri, rj], grad

    else:
        shape = (n, hp, wp, c)
        xn = te.placeholder(shape, name="xn")
        w = te.placeholder((kh, kw, c), name="w")
        gd = te.placeholder((n, hp + top, wp + left, c), name="gd")

        def parts(b: Any, y: Any, z: Any, ch: Any) -> tuple[Any, Any, Any]:  # type: ignore[misc]
            grad = gd[b, y + top - ri * dil, z + left - rj * dil, ch]
            return xn[b, y, z, ch], w[ri, rj, ch], grad

    def term(*i: Any) -> Any:
        xv, wv, grad = parts(*i)
        if lp:
            step = phi(wv - xv)
        elif nchw:
            step = te.min(te.max(wv - xv, -1.0), 1.0)
        else:
            step = te.min(te.max(wv, xv - 1.0), xv + 1.0)
        return te.sum(grad * step, axis=[ri, rj])

    acc = te.compute(shape, term, name="acc")
    tag = "adder_depthwise_conv2d_grad_input" + ("_lp" if lp else "")
    tag += "_nchw" if nchw else "_nhwc"
    if lp or nchw:
        out = te.compute(shape, lambda *i: acc[i], name="out", tag=tag)
        return [xn, w, gd, out] + ([p] if lp else [])
    gs = te.placeholder(shape, name="gs")
    out = te.compute(shape, lambda *i: acc[i] - xn[i] * gs[i], name="out", tag=tag)
    return [xn, w, gd, gs, out]
