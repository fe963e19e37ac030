"""TE compute definitions of the adder kernels: the one definition of each computation,
shared by the training kernels (:mod:`adderize.kernels.tvm_l1`), MetaSchedule tuning
(:mod:`adderize.tvm_schedules.tuning`) and whole-model compilation
(:mod:`adderize.tvm_schedules.model`). Pure ``te.compute``: no schedule here (the CPU
schedules are in :mod:`adderize.tvm_schedules.cpu`), as in TVM's topi.

* forward, ``out[m, t] = -sum_k |a[m, k] - b[t, k]|``, computed as written (sub, abs, add);
* l_p: ``|d|^p`` by :func:`pow_nonneg`, vectorisable float32 arithmetic;
* input gradient, ``g_a[m, k] = sum_t G[m, t] HardTanh(b[t, k] - a[m, k])``: with
  ``HardTanh(b - a) = clamp(b, a - 1, a + 1) - a`` it is
  ``sum_t G[m, t] clamp(b[t, k], a[m, k] - 1, a[m, k] + 1) - a[m, k] sum_t G[m, t]``:
  3 vector ops per MAC (max, min, fma).

A kernel is named by ``(kind, *shape)``: :func:`computes` maps it to its tensors.
TVM is imported inside the functions (``import adderize`` must not import it).
"""

from __future__ import annotations

from typing import Any

from adderize._errors import AdderizeError

#: inner-loop forms of the p = 1 dense conv forward (see :func:`conv_forward_compute`)
FORMS = ("abs", "max")

__all__ = [
    "FORMS",
    "binary_conv_forward_compute",
    "computes",
    "conv_forward_compute",
    "conv_grad_input_compute",
    "depthwise_forward_compute",
    "depthwise_grad_input_compute",
    "int8_conv_forward_compute",
    "l1_forward_compute",
    "l1_grad_a_compute",
    "out_size",
    "pow_nonneg",
]


def out_size(size: int, k: int, stride: int, dil: int) -> int:
    """Output length of a convolution over an already padded ``size``."""
    return (size - dil * (k - 1) - 1) // stride + 1


_LN2 = 0.6931471805599453


def pow_nonneg(d: Any, p: Any) -> Any:
    """``d ** p`` for ``d >= 0`` as vectorisable float32 arithmetic (LLVM turns ``pow`` and
    ``exp``/``log`` into scalar libm calls): ``log2 d`` from the exponent bits plus an
    atanh series for the mantissa, ``2 ** y`` from a degree-6 polynomial and the exponent
    bits. Relative error about 3e-6; ``0 ** p = 0``."""
    from tvm import tirx

    i32 = "int32"
    bits = tirx.reinterpret(i32, d)
    exponent = tirx.shift_right(bits, tirx.const(23, i32)) - 127
    low = tirx.bitwise_and(bits, tirx.const(0x7FFFFF, i32))
    mantissa = tirx.reinterpret("float32", tirx.bitwise_or(low, tirx.const(0x3F800000, i32)))
    t = (mantissa - 1.0) / (mantissa + 1.0)
    t2 = t * t
    ln_m = 2.0 * t * (1.0 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7 + t2 / 9))))
    log2d = exponent.astype("float32") + ln_m * (1.0 / _LN2)
    y = tirx.max(p * log2d, tirx.const(-126.0, "float32"))
    whole = tirx.floor(y)
    g = (y - whole) * _LN2
    poly = 1.0 + g * (1.0 + g * (0.5 + g * (1.0 / 6 + g * (1.0 / 24 + g * (1.0 / 120 + g / 720)))))
    biased = tirx.shift_left(whole.astype(i32) + 127, tirx.const(23, i32))
    scale = tirx.reinterpret("float32", biased)
    return tirx.Select(d > 0.0, poly * scale, tirx.const(0.0, "float32"))


def _lp_terms(lp: bool) -> tuple[Any, Any, Any]:
    """``(p, distance term, input-gradient term)``: the l1 kernels' (``p`` None) or the l_p
    kernels' (``p`` a runtime float32 argument, so changing p never recompiles)."""
    from tvm import te, tirx

    if not lp:
        return None, te.abs, None
    p = te.var("p", dtype="float32")

    def grad(d: Any) -> Any:  # eq. 27 for p > 1: sign(d) |d|^(p-1), d = w - x
        mag = pow_nonneg(te.abs(d), p - 1.0)
        return tirx.Select(d < 0.0, -mag, mag)

    return p, (lambda d: pow_nonneg(te.abs(d), p)), grad


def l1_forward_compute(m: int, t: int, k: int) -> list[Any]:
    """``out[m, t] = -sum_k |a[m, k] - bT[k, t]|``.

    Shapes: a [M, K], bT [K, T] (weights transposed) -> out [M, T].
    """
    from tvm import te

    a = te.placeholder((m, k), name="a")
    bt = te.placeholder((k, t), name="bT")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((m, t), lambda i, j: te.sum(te.abs(a[i, r] - bt[r, j]), axis=r), name="acc")
    out = te.compute((m, t), lambda i, j: -acc[i, j], name="out", tag="adder_l1_forward")
    return [a, bt, out]


def l1_grad_a_compute(m: int, t: int, k: int) -> list[Any]:
    """``out[m, k] = sum_t g[m, t] clamp(b[t, k], a[m, k] - 1, a[m, k] + 1) - a[m, k] gs[m]``
    (= sum_t g HardTanh(b - a)). Shapes: a [M, K], b [T, K], g [M, T], gs [M] -> [M, K]."""
    from tvm import te

    a = te.placeholder((m, k), name="a")
    b = te.placeholder((t, k), name="b")
    g = te.placeholder((m, t), name="g")
    gs = te.placeholder((m,), name="gs")
    r = te.reduce_axis((0, t), name="t")
    acc = te.compute(
        (m, k),
        lambda i, j: te.sum(
            g[i, r] * te.min(te.max(b[r, j], a[i, j] - 1.0), a[i, j] + 1.0), axis=r
        ),
        name="acc",
    )
    out = te.compute(
        (m, k), lambda i, j: acc[i, j] - a[i, j] * gs[i], name="out", tag="adder_l1_grad_a"
    )
    return [a, b, g, gs, out]


def conv_forward_compute(
    n: int,
    c: int,
    hp: int,
    wp: int,
    t: int,
    kh: int,
    kw: int,
    stride: int,
    dil: int,
    g: int,
    lp: bool = False,
    mac: bool = False,
    form: str = "abs",
    nchw_out: bool = False,
) -> list[Any]:
    """Direct adder conv, NCHW input (already padded) -> NHWC output:
    ``out[n, oh, ow, g, t] = -sum_{c, i, j} |x[n, g*Cg + c, oh*s + i*d, ow*s + j*d] -
    wt[g, c, i, j, t]|`` (to the power ``p``, a trailing run-time argument, with ``lp``).
    Shapes: x [N, C, Hp, Wp], wt [G, Cg, kh, kw, Tg] -> out [N, OH, OW, G, Tg].
    ``mac=True`` is the ordinary convolution ``sum x * wt`` on the same loops (for the
    full-precision layers of a compiled model).

    ``form="max"`` (p = 1) computes the same with ``|x - w| = 2 max(x, w) - x - w``: the
    inner loop is ``max, add`` (one op less than ``sub, abs, add``), plus the window sums of
    ``x`` (``xs``, once per position and group) and the filter sums of ``wt`` (``ws``):
    ``out = xs + ws - 2 sum max(x, w)``. Which form is faster depends on the CPU's ports.

    ``nchw_out=True`` writes the output NCHW, ``out [N, G, Tg, OH, OW]``, from the same
    accumulators (the store of a tile runs along the output row): an NCHW model then needs
    no layout copy after every adder layer.
    """
    from tvm import te

    if form not in FORMS:
        raise AdderizeError(f"form must be one of {FORMS}, got {form!r}")
    if form == "max" and (lp or mac):
        raise AdderizeError("form='max' is the p = 1 adder's; l_p and MAC kernels use 'abs'")
    cg, tg = c // g, t // g
    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    p, dist, _ = _lp_terms(lp)
    term = (lambda a, b: a * b) if mac else (lambda a, b: dist(a - b))
    if form == "max":
        term = te.max
    x = te.placeholder((n, c, hp, wp), name="x")
    wt = te.placeholder((g, cg, kh, kw, tg), name="wt")

    def window() -> tuple[Any, Any, Any]:
        return (
            te.reduce_axis((0, cg), name="rc"),
            te.reduce_axis((0, kh), name="ri"),
            te.reduce_axis((0, kw), name="rj"),
        )

    xs = base = None
    if form == "max":  # window sums of x and filter sums of w, before the main loop
        xc, xi, xj = window()
        xs = te.compute(
            (n, oh, ow, g),
            lambda b, y, z, gg: te.sum(
                x[b, gg * cg + xc, y * stride + xi * dil, z * stride + xj * dil],
                axis=[xc, xi, xj],
            ),
            name="xs",
        )
        wc, wi, wj = window()
        ws = te.compute(
            (g, tg), lambda gg, o: te.sum(wt[gg, wc, wi, wj, o], axis=[wc, wi, wj]), name="ws"
        )
        # xs + ws per output, computed per tile by the schedule: out = base - 2 acc
        base = te.compute(
            (n, oh, ow, g, tg), lambda b, y, z, gg, o: xs[b, y, z, gg] + ws[gg, o], name="base"
        )
    rc, ri, rj = window()

    acc = te.compute(
        (n, oh, ow, g, tg),
        lambda b, y, z, gg, o: te.sum(
            term(
                x[b, gg * cg + rc, y * stride + ri * dil, z * stride + rj * dil],
                wt[gg, rc, ri, rj, o],
            ),
            axis=[rc, ri, rj],
        ),
        name="acc",
    )

    def epilogue(b: Any, y: Any, z: Any, gg: Any, o: Any) -> Any:
        if mac:
            return acc[b, y, z, gg, o]
        if xs is None:
            return -acc[b, y, z, gg, o]
        return base[b, y, z, gg, o] - 2.0 * acc[b, y, z, gg, o]  # -sum |x - w|

    tag = "conv2d_nchw_nhwc" if mac else "adder_conv2d_nchw_nhwc"
    if nchw_out:
        out = te.compute(
            (n, g, tg, oh, ow),
            lambda b, gg, o, y, z: epilogue(b, y, z, gg, o),
            name="out",
            tag=tag.replace("_nhwc", "_nchw"),
        )
        return [x, wt, out] + ([p] if lp else [])
    out = te.compute((n, oh, ow, g, tg), epilogue, name="out", tag=tag)
    return [x, wt, out] + ([p] if lp else [])


def conv_grad_input_compute(
    n: int,
    c: int,
    hp: int,
    wp: int,
    t: int,
    kh: int,
    kw: int,
    dil: int,
    g: int,
    lp: bool = False,
) -> list[Any]:
    """Input gradient of the adder conv (eq. 27) as a direct correlation, NHWC.

    The eq. 27 term depends on X at the input position itself, so
    ``gx[n, h, w, g, c] = sum_{t, i, j} gd[n, h + d(kh-1) - i d, w + d(kw-1) - j d, g*Tg + t]
    phi(wt[g, i, j, t, c] - x)`` with ``gd`` the output gradient zero-dilated by the stride
    and padded, and ``x`` the padded input at ``[n, h, w, g*Cg + c]``. For p = 1,
    ``phi = HardTanh`` is computed as ``clamp(w, x - 1, x + 1) - x``, the ``- x`` summed
    through ``gs`` (window sums of ``gd``); for l_p, ``phi(d) = sign(d) |d|^(p-1)``.
    Shapes: xn [N, Hp, Wp, C], wt [G, kh, kw, Tg, Cg], gd [N, Hp + d(kh-1), Wp + d(kw-1), T],
    gs [N, Hp, Wp, G] (p = 1 only) -> out [N, Hp, Wp, G, Cg]; then ``p`` for l_p.
    """
    from tvm import te

    cg, tg = c // g, t // g
    p, _, phi = _lp_terms(lp)
    xn = te.placeholder((n, hp, wp, c), name="xn")
    wt = te.placeholder((g, kh, kw, tg, cg), name="wt")
    gd = te.placeholder((n, hp + dil * (kh - 1), wp + dil * (kw - 1), t), name="gd")
    gs = te.placeholder((n, hp, wp, g), name="gs")
    rt = te.reduce_axis((0, tg), name="rt")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")

    def term(b: Any, y: Any, z: Any, gg: Any, cc: Any) -> Any:
        xv = xn[b, y, z, gg * cg + cc]
        w = wt[gg, ri, rj, rt, cc]
        grad = gd[b, y + dil * (kh - 1) - ri * dil, z + dil * (kw - 1) - rj * dil, gg * tg + rt]
        step = phi(w - xv) if lp else te.min(te.max(w, xv - 1.0), xv + 1.0)
        return te.sum(grad * step, axis=[ri, rj, rt])

    acc = te.compute((n, hp, wp, g, cg), term, name="acc")
    if lp:
        out = te.compute(
            (n, hp, wp, g, cg),
            lambda b, y, z, gg, cc: acc[b, y, z, gg, cc],
            name="out",
            tag="adder_conv2d_grad_input_lp_nhwc",
        )
        return [xn, wt, gd, out, p]
    out = te.compute(
        (n, hp, wp, g, cg),
        lambda b, y, z, gg, cc: acc[b, y, z, gg, cc] - xn[b, y, z, gg * cg + cc] * gs[b, y, z, gg],
        name="out",
        tag="adder_conv2d_grad_input_nhwc",
    )
    return [xn, wt, gd, gs, out]


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
    p, dist, _ = _lp_terms(lp)
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

    p, _, phi = _lp_terms(lp)
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


def computes(kind: str, *shape: int, form: str = "abs") -> list[Any]:
    """The compute definition (tensors) behind kernel ``kind`` (``form``: the p = 1 dense
    conv forward's inner loop, see :func:`conv_forward_compute`)."""
    lp = kind.endswith("_lp")
    base = kind.removesuffix("_lp")
    if form != "abs":
        if kind != "conv_forward":
            raise AdderizeError(f"only conv_forward has the {form!r} form, not {kind!r}")
        return conv_forward_compute(*shape, form=form)
    if base == "conv_forward_nchw":
        return conv_forward_compute(*shape, lp=lp, nchw_out=True)
    if base in ("depthwise_forward_nchw", "depthwise_grad_input_nchw"):
        fn = depthwise_forward_compute if "forward" in base else depthwise_grad_input_compute
        return fn(*shape, lp=lp, nchw=True)
    if base in ("forward", "grad_a"):
        return (l1_forward_compute if base == "forward" else l1_grad_a_compute)(*shape)
    if base == "conv_mac_forward":
        return conv_forward_compute(*shape, mac=True)
    if base == "int8_conv_forward":
        return int8_conv_forward_compute(*shape)
    if base == "binary_conv_forward":
        return binary_conv_forward_compute(*shape)
    fn = {
        "conv_forward": conv_forward_compute,
        "conv_grad_input": conv_grad_input_compute,
        "depthwise_forward": depthwise_forward_compute,
        "depthwise_grad_input": depthwise_grad_input_compute,
    }[base]
    return fn(*shape, lp=lp)
