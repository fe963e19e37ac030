"""Dense adder computes: the row ("GEMM") form of linear layers and the direct conv
(forward, input gradient; l_1 and l_p; the MAC conv of compiled models)."""

from __future__ import annotations

from typing import Any

from adderize._errors import AdderizeError
from adderize.tvm_schedules.compute.common import lp_terms, out_size

#: inner-loop forms of the p = 1 dense conv forward (see :func:`conv_forward_compute`)
FORMS = ("abs", "max", "fma", "maxfma")
#: the forms that accumulate with a multiply by the input ``one`` (built with LLVM's FP
#: contraction, so that it is an FMA; the depthwise forward has ``channels_fma``), each
#: with its counterpart accumulated by adds
FMA_FORMS = {"fma": "abs", "maxfma": "max", "channels_fma": "channels"}

__all__ = [
    "FMA_FORMS",
    "FORMS",
    "conv_forward_compute",
    "conv_grad_input_compute",
    "l1_forward_compute",
    "l1_grad_a_compute",
    "one_position_backward_compute",
    "one_position_forward_compute",
    "pointwise_forward_nchw_compute",
    "pointwise_grad_input_nchw_compute",
]


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


def one_position_forward_compute(t: int, c: int) -> list[Any]:
    """An ungrouped 1x1 conv at one output position (a batch-1 squeeze-excite conv): eq. 1,
    ``out[t] = -sum_c |w[t, c] - x[c]|``, on the conv weight as it is (no re-layout).
    Shapes: x [C], w [T, C] -> out [T]."""
    from tvm import te

    x = te.placeholder((c,), name="x")
    w = te.placeholder((t, c), name="w")
    r = te.reduce_axis((0, c), name="c")
    acc = te.compute((t,), lambda i: te.sum(te.abs(w[i, r] - x[r]), axis=r), name="acc")
    out = te.compute((t,), lambda i: -acc[i], name="out", tag="adder_one_position_forward")
    return [x, w, out]


def one_position_backward_compute(t: int, c: int) -> list[Any]:
    """Both training gradients of :func:`one_position_forward_compute`: eq. 23,
    ``grad_w[t, c] = g[t] (x[c] - w[t, c])``, and eq. 27 (p = 1),
    ``grad_x[c] = sum_t g[t] HardTanh(w[t, c] - x[c])``. Shapes: x [C], w [T, C], g [T]
    -> grad_w [T, C], grad_x [C]."""
    from tvm import te

    x = te.placeholder((c,), name="x")
    w = te.placeholder((t, c), name="w")
    g = te.placeholder((t,), name="g")
    grad_w = te.compute((t, c), lambda i, j: (x[j] - w[i, j]) * g[i], name="grad_w")
    r = te.reduce_axis((0, t), name="t")
    grad_x = te.compute(
        (c,),
        lambda j: te.sum(g[r] * te.min(te.max(w[r, j] - x[j], -1.0), 1.0), axis=r),
        name="grad_x",
        tag="adder_one_position_backward",
    )
    return [x, w, g, grad_w, grad_x]


def pointwise_forward_nchw_compute(n: int, c: int, m: int, t: int, form: str = "abs") -> list[Any]:
    """Forward (p = 1) of an ungrouped 1x1 stride-1 adder conv on NCHW memory, the
    positions vectorised: ``out[b, t, m] = -sum_c |x[b, c, m] - w[t, c]|``, each weight a
    broadcast scalar. No re-layout of the weight (the conv weight as it is) and no
    transposed store: a tile of output channels x positions is written along the rows
    of the NCHW output. ``form="fma"`` accumulates ``|x - w| * one`` by FMAs (see
    :func:`conv_forward_compute`). Shapes: x [N, C, M], w [T, C] -> out [N, T, M]."""
    from tvm import te

    if form not in ("abs", "fma"):
        raise AdderizeError(f"the pointwise NCHW forward has forms 'abs' and 'fma', not {form!r}")
    x = te.placeholder((n, c, m), name="x")
    w = te.placeholder((t, c), name="w")
    one = te.placeholder((1,), name="one")
    r = te.reduce_axis((0, c), name="rc")

    def term(a: Any, b: Any) -> Any:
        return te.abs(a - b) * one[0] if form == "fma" else te.abs(a - b)

    acc = te.compute(
        (n, t, m), lambda b, o, j: te.sum(term(x[b, r, j], w[o, r]), axis=r), name="acc"
    )
    out = te.compute(
        (n, t, m), lambda b, o, j: -acc[b, o, j], name="out", tag="adder_pointwise_nchw"
    )
    return [x, w, one, out] if form == "fma" else [x, w, out]


def pointwise_grad_input_nchw_compute(n: int, c: int, m: int, t: int) -> list[Any]:
    """Input gradient (eq. 27, p = 1) of a 1x1 stride-1 adder conv on NCHW memory, the
    positions vectorised: ``out[b, c, m] = sum_t g[b, t, m] clamp(w[t, c], x - 1, x + 1)
    - x gs[b, m]`` with ``x = x[b, c, m]`` and ``gs`` the channel sums of ``g``. No layout
    copy of the input, the output gradient or the result (an NHWC kernel needs all three).
    Shapes: x [N, C, M], w [T, C] (the conv weight as it is), g [N, T, M], gs [N, M] ->
    out [N, C, M]."""
    from tvm import te

    x = te.placeholder((n, c, m), name="x")
    w = te.placeholder((t, c), name="w")
    g = te.placeholder((n, t, m), name="g")
    gs = te.placeholder((n, m), name="gs")
    r = te.reduce_axis((0, t), name="t")
    acc = te.compute(
        (n, c, m),
        lambda b, i, j: te.sum(
            g[b, r, j] * te.min(te.max(w[r, i], x[b, i, j] - 1.0), x[b, i, j] + 1.0), axis=r
        ),
        name="acc",
    )
    out = te.compute(
        (n, c, m),
        lambda b, i, j: acc[b, i, j] - x[b, i, j] * gs[b, j],
        name="out",
        tag="adder_pointwise_grad_input_nchw",
    )
    return [x, w, g, gs, out]


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
    ``x`` (``xs``: channel sums ``xc`` once per input position, then summed over each
    window) and the filter sums of ``wt`` (``ws``): ``out = xs + ws - 2 sum max(x, w)``.
    Which form is faster depends on the CPU's ports.

    ``form="fma"`` (p = 1) accumulates ``|x - w| * one`` with ``one`` a 1-element input
    holding 1.0 (a trailing input before ``out``; its value is unknown to the compiler, so
    the product is not folded away): built with LLVM's FP contraction the inner loop is
    ``sub, and, fma``, so the accumulation runs on the FMA ports instead of competing with
    the subtraction for the FP-add ports (17% faster on AMD Zen 5, where adds and FMAs
    have two ports each; measured per machine like the tiles). ``form="maxfma"`` is the
    max form accumulated the same way: ``max, fma``, which on AMD Zen 4 issue on different
    ports, one 512-bit term per cycle like a conv's FMA (``sub, and, fma``: 1.6 cycles).

    ``nchw_out=True`` writes the output NCHW, ``out [N, G, Tg, OH, OW]``, from the same
    accumulators (the store of a tile runs along the output row): an NCHW model then needs
    no layout copy after every adder layer.
    """
    from tvm import te

    if form not in FORMS:
        raise AdderizeError(f"form must be one of {FORMS}, got {form!r}")
    if form != "abs" and (lp or mac):
        raise AdderizeError(f"form={form!r} is the p = 1 adder's; l_p and MAC kernels use 'abs'")
    cg, tg = c // g, t // g
    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    p, dist, _ = lp_terms(lp)
    term = (lambda a, b: a * b) if mac else (lambda a, b: dist(a - b))
    x = te.placeholder((n, c, hp, wp), name="x")
    wt = te.placeholder((g, cg, kh, kw, tg), name="wt")
    one = te.placeholder((1,), name="one")
    if form == "max":
        term = te.max
    elif form == "fma":
        term = lambda a, b: te.abs(a - b) * one[0]  # noqa: E731
    elif form == "maxfma":
        term = lambda a, b: te.max(a, b) * one[0]  # noqa: E731

    def window() -> tuple[Any, Any, Any]:
        return (
            te.reduce_axis((0, cg), name="rc"),
            te.reduce_axis((0, kh), name="ri"),
            te.reduce_axis((0, kw), name="rj"),
        )

    xs = ws = None
    if form in ("max", "maxfma"):  # window sums of x and filter sums of w, before the main loop
        xr = te.reduce_axis((0, cg), name="xr")
        xc = te.compute(
            (n, g, hp, wp),
            lambda b, gg, h, w: te.sum(x[b, gg * cg + xr, h, w], axis=xr),
            name="xc",
        )
        xi, xj = te.reduce_axis((0, kh), name="xi"), te.reduce_axis((0, kw), name="xj")
        xs = te.compute(
            (n, g, oh, ow),
            lambda b, gg, y, z: te.sum(
                xc[b, gg, y * stride + xi * dil, z * stride + xj * dil], axis=[xi, xj]
            ),
            name="xs",
        )
        wc, wi, wj = window()
        ws = te.compute(
            (g, tg), lambda gg, o: te.sum(wt[gg, wc, wi, wj, o], axis=[wc, wi, wj]), name="ws"
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
        return (-1.0 if xs is None else -2.0) * acc[b, y, z, gg, o]

    tag = "conv2d_nchw_nhwc" if mac else "adder_conv2d_nchw_nhwc"
    # an output index from (b, y, z, gg, o), and back
    if nchw_out:
        shape, tag = (n, g, tg, oh, ow), tag.replace("_nhwc", "_nchw")

        def pos(b: Any, gg: Any, o: Any, y: Any, z: Any) -> tuple[Any, ...]:
            return b, y, z, gg, o

        def idx(b: Any, y: Any, z: Any, gg: Any, o: Any) -> tuple[Any, ...]:
            return b, gg, o, y, z
    else:
        shape = (n, oh, ow, g, tg)
        pos = idx = lambda *i: i
    # the max forms add the side terms in a pass of their own after the tiles ("tiles"):
    # a tile's epilogue may read only what is computed inside the tile
    name = "out" if xs is None else "tiles"
    out = te.compute(shape, lambda *i: epilogue(*pos(*i)), name=name, tag=tag)
    if xs is not None:
        tiles = out

        def total(b: Any, y: Any, z: Any, gg: Any, o: Any) -> Any:
            return tiles[idx(b, y, z, gg, o)] + xs[b, gg, y, z] + ws[gg, o]

        out = te.compute(shape, lambda *i: total(*pos(*i)), name="out", tag=tag)
    inputs = [x, wt, one] if form in FMA_FORMS else [x, wt]
    return [*inputs, out] + ([p] if lp else [])


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
    p, _, phi = lp_terms(lp)
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
