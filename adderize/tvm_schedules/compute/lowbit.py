"""Low-bit computes of compiled models: the int8 adder conv (byte SAD) and the binary
conv (XNOR + popcount on packed signs)."""

from __future__ import annotations

from typing import Any

from adderize._errors import AdderizeError
from adderize.tvm_schedules.compute.common import out_size

__all__ = ["binary_conv_forward_compute", "int8_conv_forward_compute"]


def int8_conv_forward_compute(
    n: int, hp: int, wp: int, c: int, t: int, kh: int, kw: int, stride: int, dil: int, group: int
) -> list[Any]:
    """Integer adder conv on one shared uint8 grid (inputs and weights quantised with the same
    scale and zero point, so ``|x - w|`` needs no rescaling):
    ``out[n, oh, ow, t] = sum_{i, j, c} |x[n, oh*s + i*d, ow*s + j*d, c] - w[t, i, j, c]|``
    in int32 (the float output is ``-scale * out``). ``|a - b|`` is ``max - min`` in uint8.

    The channel sum is grouped as a byte sum-of-absolute-differences instruction computes it
    (x86 ``psadbw``: 8 bytes into each 64-bit lane, ``group`` lanes per instruction): a
    ``part`` block of ``group`` int64 partial sums per output, each over channels
    ``c0 + 8 g .. c0 + 8 g + 7`` of every ``8 * group``-channel chunk, then their sum.
    Shapes: x [N, Hp, Wp, C] uint8 (padded with the zero point), w [T, kh, kw, C] uint8 ->
    out [N, OH, OW, T] int32; ``C`` a multiple of ``8 * group`` (pad both with one value)."""
    from tvm import te

    width = 8 * group
    if c % width:
        raise AdderizeError(f"int8 conv channels {c} are not a multiple of 8 * group = {width}")
    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    x = te.placeholder((n, hp, wp, c), "uint8", name="x")
    w = te.placeholder((t, kh, kw, c), "uint8", name="w")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    rc = te.reduce_axis((0, c // width), name="rc")
    rk = te.reduce_axis((0, 8), name="rk")

    def absdiff(a: Any, b: Any) -> Any:
        return (te.max(a, b) - te.min(a, b)).astype("int64")

    part = te.compute(
        (n, oh, ow, t, group),
        lambda b, y, z, o, g: te.sum(
            absdiff(
                x[b, y * stride + ri * dil, z * stride + rj * dil, rc * width + g * 8 + rk],
                w[o, ri, rj, rc * width + g * 8 + rk],
            ),
            axis=[ri, rj, rc, rk],
        ),
        name="part",
    )

    def total(b: Any, y: Any, z: Any, o: Any) -> Any:
        acc = part[b, y, z, o, 0]
        for g in range(1, group):
            acc = acc + part[b, y, z, o, g]
        return acc.astype("int32")

    out = te.compute((n, oh, ow, t), total, name="out", tag="adder_conv2d_int8_nhwc")
    return [x, w, out]


def binary_conv_forward_compute(
    n: int, hp: int, wp: int, words: int, t: int, kh: int, kw: int, stride: int, dil: int
) -> list[Any]:
    """Bit-packed XNOR conv (XNOR-Net): 32 channels per 32-bit word, bit set for +1.
    ``m`` marks real (non-padding) channels; padded positions and channels are 0 in ``m``
    and contribute 0, as in the float layer. With ``d = popcount((x ^ w) & m)`` (the
    disagreeing signs) and ``v = popcount(m)`` (the valid terms), the dot product of the
    +-1 vectors is ``v - 2 d``, scaled by the per-output-channel ``alpha``:
    ``out[n, oh, ow, t] = alpha[t] * sum_{i, j, q} (popcount(m) - 2 popcount((x ^ w) & m))``.
    Shapes: x, m [N, Hp, Wp, Q] int32 (bit patterns), w [T, kh, kw, Q], alpha [T] ->
    out [N, OH, OW, T] float32.
    """
    from tvm import te, tirx

    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    x = te.placeholder((n, hp, wp, words), "int32", name="x")
    m = te.placeholder((n, hp, wp, words), "int32", name="m")
    w = te.placeholder((t, kh, kw, words), "int32", name="w")
    alpha = te.placeholder((t,), name="alpha")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    rq = te.reduce_axis((0, words), name="rq")

    def agree(b: Any, y: Any, z: Any, o: Any) -> Any:
        yy, zz = y * stride + ri * dil, z * stride + rj * dil
        mask = m[b, yy, zz, rq]
        differ = tirx.popcount(
            tirx.bitwise_and(tirx.bitwise_xor(x[b, yy, zz, rq], w[o, ri, rj, rq]), mask)
        )
        return tirx.popcount(mask).astype("int32") - 2 * differ.astype("int32")

    acc = te.compute(
        (n, oh, ow, t),
        lambda b, y, z, o: te.sum(agree(b, y, z, o), axis=[ri, rj, rq]),
        name="acc",
    )
    out = te.compute(
        (n, oh, ow, t),
        lambda b, y, z, o: alpha[o] * acc[b, y, z, o].astype("float32"),
        name="out",
        tag="binary_conv2d_xnor_nhwc",
    )
    return [x, m, w, alpha, out]
