"""TVM-generated adder kernels: forward and input gradient (eq. 27) of direct dense and
depthwise convolutions (p = 1, and l_p with p a run-time argument) and of the row
("GEMM") form used by linear layers and the remaining convs (p = 1).

Compute definitions (pure ``te.compute``) are separate from schedules, as in TVM's topi:

* forward, ``out[m, t] = -sum_k |a[m, k] - b[t, k]|``, computed as written (sub, abs,
  add). The identity ``|x - w| = 2 max(x, w) - x - w`` needs one op less per MAC but
  measured 1.4-1.6x slower here (AVX-512, Zen 5), and needs window sums besides;
* l_p: ``|d|^p`` by :func:`pow_nonneg`, vectorisable float32 arithmetic;
* input gradient, ``g_a[m, k] = sum_t G[m, t] HardTanh(b[t, k] - a[m, k])``: with
  ``HardTanh(b - a) = clamp(b, a - 1, a + 1) - a`` it is
  ``sum_t G[m, t] clamp(b[t, k], a[m, k] - 1, a[m, k] + 1) - a[m, k] sum_t G[m, t]``:
  3 vector ops per MAC (max, min, fma).

The CPU schedule is hand-written (register blocking over rows, vectorisation over the
output/gradient columns, parallel tiles) and needs no tuning. Kernels are compiled per
shape at first use (about 0.1 s), kept in memory and in a disk cache
(``$XDG_CACHE_HOME/adderize/kernels``, default ``~/.cache/adderize/kernels``) keyed by
kernel version, shape, target and TVM version. Torch tensors are passed zero-copy
(DLPack). Tuned MetaSchedule schedules replace the hand schedule when the tuning
database (:func:`tuning_dir`) holds one. :func:`cuda_executable` builds the same computes
for a CUDA target.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "available",
    "conv_forward",
    "conv_grad_input",
    "conv_supported",
    "cuda_executable",
    "forward",
    "grad_a",
    "supported",
    "tune",
    "tuned",
    "tuning_dir",
    "workloads",
]

KERNEL_VERSION = 6
_LOCK = threading.Lock()
_KERNELS: dict[tuple[Any, ...], Callable[..., Any]] = {}
_STATE: dict[str, Any] = {}


def available() -> bool:
    """Whether TVM can be imported (checked once; the import takes a few seconds).

    Before TVM's first import its thread pool is sized to torch's thread count, told not
    to pin threads (its default here is one pinned thread, which also slows torch down) and
    not to spin when idle (spinning workers slow the torch ops between adder layers);
    a process that imported TVM earlier keeps its own settings.
    """
    if "ok" not in _STATE:
        os.environ.setdefault("TVM_NUM_THREADS", str(max(1, torch.get_num_threads())))
        os.environ.setdefault("TVM_BIND_THREADS", "0")
        # idle workers block at once instead of spinning on the cores torch needs next
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
        try:
            import tvm  # noqa: F401
            from tvm import s_tir, te  # noqa: F401

            _STATE["ok"] = True
        except Exception as e:  # ImportError, or a broken native library
            _STATE["ok"], _STATE["error"] = False, f"{type(e).__name__}: {e}"
    return bool(_STATE["ok"])


def unavailable_reason() -> str:
    available()
    return str(_STATE.get("error", ""))


def supported(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether these ``[G, M, K]`` / ``[G, T, K]`` operands can use the TVM kernels."""
    return (
        a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and b.shape[1] >= 8
        and a.shape[2] >= 8
    )


def _tile(n: int) -> tuple[int, int]:
    """(vector tile, padded extent) for a dimension vectorised in AVX-512 / AVX2 lanes."""
    for tile in (32, 16, 8):
        if n % tile == 0:
            return tile, n
    return 16, -(-n // 16) * 16


# -- compute definitions ---------------------------------------------------------------
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
) -> list[Any]:
    """Direct adder conv, NCHW input (already padded) -> NHWC output:
    ``out[n, oh, ow, g, t] = -sum_{c, i, j} |x[n, g*Cg + c, oh*s + i*d, ow*s + j*d] -
    wt[g, c, i, j, t]|`` (to the power ``p``, a trailing run-time argument, with ``lp``).
    Shapes: x [N, C, Hp, Wp], wt [G, Cg, kh, kw, Tg] -> out [N, OH, OW, G, Tg].
    ``mac=True`` is the ordinary convolution ``sum x * wt`` on the same loops (for the
    full-precision layers of a compiled model).
    """
    from tvm import te

    cg, tg = c // g, t // g
    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
    p, dist, _ = _lp_terms(lp)
    term = (lambda a, b: a * b) if mac else (lambda a, b: dist(a - b))
    x = te.placeholder((n, c, hp, wp), name="x")
    wt = te.placeholder((g, cg, kh, kw, tg), name="wt")
    rc = te.reduce_axis((0, cg), name="rc")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
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
    out = te.compute(
        (n, oh, ow, g, tg),
        lambda b, y, z, gg, o: acc[b, y, z, gg, o] if mac else -acc[b, y, z, gg, o],
        name="out",
        tag="conv2d_nchw_nhwc" if mac else "adder_conv2d_nchw_nhwc",
    )
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
    n: int, c: int, hp: int, wp: int, kh: int, kw: int, stride: int, dil: int, lp: bool = False
) -> list[Any]:
    """Depthwise adder conv, NHWC, channels vectorised:
    ``out[n, oh, ow, c] = -sum_{i, j} |x[n, oh*s + i*d, ow*s + j*d, c] - w[i, j, c]|``
    (to the power ``p``, a trailing run-time argument, with ``lp``).
    Shapes: x [N, Hp, Wp, C], w [kh, kw, C] -> out [N, OH, OW, C]."""
    from tvm import te

    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
    p, dist, _ = _lp_terms(lp)
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
        (n, oh, ow, c),
        lambda b, y, z, ch: -acc[b, y, z, ch],
        name="out",
        tag="adder_depthwise_conv2d_nhwc",
    )
    return [x, w, out] + ([p] if lp else [])


def depthwise_grad_input_compute(
    n: int, c: int, hp: int, wp: int, kh: int, kw: int, dil: int, lp: bool = False
) -> list[Any]:
    """Input gradient of the depthwise adder conv (eq. 27), NHWC, as
    :func:`conv_grad_input_compute` with one channel per group. Shapes: xn [N, Hp, Wp, C],
    w [kh, kw, C], gd [N, Hp + d(kh-1), Wp + d(kw-1), C], gs [N, Hp, Wp, C] (p = 1 only)."""
    from tvm import te

    p, _, phi = _lp_terms(lp)
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
            lambda b, y, z, ch: acc[b, y, z, ch],
            name="out",
            tag="adder_depthwise_conv2d_grad_input_lp_nhwc",
        )
        return [xn, w, gd, out, p]
    out = te.compute(
        (n, hp, wp, c),
        lambda b, y, z, ch: acc[b, y, z, ch] - xn[b, y, z, ch] * gs[b, y, z, ch],
        name="out",
        tag="adder_depthwise_conv2d_grad_input_nhwc",
    )
    return [xn, w, gd, gs, out]


def int8_conv_forward_compute(
    n: int, hp: int, wp: int, c: int, t: int, kh: int, kw: int, stride: int, dil: int
) -> list[Any]:
    """Integer adder conv on one shared uint8 grid (inputs and weights quantised with the same
    scale and zero point, so ``|x - w|`` needs no rescaling):
    ``out[n, oh, ow, t] = sum_{i, j, c} |x[n, oh*s + i*d, ow*s + j*d, c] - w[t, i, j, c]|``
    in int32 (the float output is ``-scale * out``). ``|a - b|`` is ``max - min`` in uint8.
    Shapes: x [N, Hp, Wp, C] uint8 (padded with the zero point), w [T, kh, kw, C] uint8 ->
    out [N, OH, OW, T] int32."""
    from tvm import te

    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
    x = te.placeholder((n, hp, wp, c), "uint8", name="x")
    w = te.placeholder((t, kh, kw, c), "uint8", name="w")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")
    rc = te.reduce_axis((0, c), name="rc")

    def absdiff(a: Any, b: Any) -> Any:
        return (te.max(a, b) - te.min(a, b)).astype("int32")

    out = te.compute(
        (n, oh, ow, t),
        lambda b, y, z, o: te.sum(
            absdiff(x[b, y * stride + ri * dil, z * stride + rj * dil, rc], w[o, ri, rj, rc]),
            axis=[ri, rj, rc],
        ),
        name="out",
        tag="adder_conv2d_int8_nhwc",
    )
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

    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
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


# -- CPU schedule ----------------------------------------------------------------------
def _int8_schedule(tensors: list[Any], lanes: int) -> Any:
    """Channel-vectorised schedule for :func:`int8_conv_forward_compute`: the channel
    reduction is split by ``lanes`` and factored into a per-output local vector accumulator
    (byte |a - b| widened and added lane-wise), summed horizontally at the end; output
    rows run in parallel."""
    from tvm import s_tir, te

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    out = sch.get_sblock("out")
    b, y, *_, rc = sch.get_loops(out)
    _, rc_inner = sch.split(rc, [None, lanes])
    rf = sch.rfactor(rc_inner, 0)
    sch.compute_at(rf, sch.get_loops(out)[3])
    sch.set_scope(rf, 0, "local")
    lane, *red = sch.get_loops(rf)[4:]
    sch.reorder(*red, lane)
    sch.vectorize(lane)
    sch.parallel(sch.fuse(b, y))
    sch.decompose_reduction(rf, sch.get_loops(rf)[3])  # after fusing: (b y) z o | ri rj .. lane
    return sch.mod


def _cpu_schedule(
    tensors: list[Any],
    reduce_block: str,
    n_reduce: int,
    row_axis: int,
    rows: int,
    cols: int,
    cols_outer: bool = False,
) -> Any:
    """Register-blocked schedule: a tile of ``rows`` (spatial axis ``row_axis``, unrolled) x
    ``cols`` (last spatial axis, vectorised) accumulators kept local, reduction loops outside
    the tile, epilogue fused into the tile, outer loops in parallel.

    ``cols_outer`` puts the column-tile loop (and the spatial axes between rows and columns)
    above every other spatial loop, so the weight slice of one column tile stays in cache
    while all positions are computed (convolutions with large weights).
    """
    from tvm import s_tir, te

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    blk = sch.get_sblock(reduce_block)
    loops = sch.get_loops(blk)
    spatial, red = loops[:-n_reduce], loops[-n_reduce:]
    ro, ri = sch.split(spatial[row_axis], [None, rows])
    co, ci = sch.split(spatial[-1], [None, cols])
    middle = list(spatial[row_axis + 1 : -1])
    before = list(spatial[:row_axis])
    if cols_outer:
        sch.reorder(*middle, co, *before, ro, *red, ri, ci)
        anchor, parallel = ro, [*middle, co, *before]
    else:
        sch.reorder(*before, ro, *middle, co, *red, ri, ci)
        anchor, parallel = co, ([ro, co] if not before and not middle else before)
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, anchor)
    sch.set_scope(blk, 0, "local")
    sch.vectorize(ci)
    sch.unroll(ri)
    sch.vectorize(sch.get_loops(out)[-1])
    sch.parallel(sch.fuse(*parallel) if len(parallel) > 1 else parallel[0])
    sch.decompose_reduction(blk, red[0])
    sch.vectorize(sch.get_loops(sch.get_sblock(f"{reduce_block}_init"))[-1])
    return sch.mod


def _target() -> Any:
    import tvm
    from tvm.target import codegen

    if "target" not in _STATE:
        _STATE["target"] = tvm.target.Target(
            {
                "kind": "llvm",
                "mcpu": codegen.llvm_get_system_cpu(),
                "num-cores": max(1, torch.get_num_threads()),
            }
        )
    return _STATE["target"]


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "adderize" / "kernels"


def _cache_intact(path: Path) -> bool:
    """Whether ``path`` is a complete cached kernel: its digest file matches its bytes.

    Loading a damaged shared library can kill the process (SIGBUS on a truncated file), so a
    file is only loaded when the digest written after it says it is whole.
    """
    digest = path.with_name(path.name + ".sha256")
    try:
        want = digest.read_text().strip()
        return hashlib.sha256(path.read_bytes()).hexdigest() == want
    except OSError:
        return False


def _cache_write(lib: Any, path: Path) -> None:
    """Export ``lib`` to ``path`` and then its digest, each through a temporary file renamed
    into place: concurrent writers and a writer killed midway leave a usable cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.so")
        lib.export_library(str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        tmp.replace(path)
        tmp_digest = path.with_name(f"{path.name}.{os.getpid()}.tmp.sha256")
        tmp_digest.write_text(digest)
        tmp_digest.replace(path.with_name(path.name + ".sha256"))
    except OSError:  # read-only home: keep the in-memory kernel
        pass


def _kernel(kind: str, *shape: int) -> Callable[..., Any]:
    key = (kind, *shape)
    recording = _STATE.get("recording")
    if recording is not None:
        recording.setdefault(key, None)
    fn = _KERNELS.get(key)
    if fn is not None:
        return fn
    with _LOCK:
        if key in _KERNELS:
            return _KERNELS[key]
        import tvm

        target = _target()
        ident = f"{key}-{KERNEL_VERSION}-{target}-{tvm.__version__}-{_tuning_stamp()}"
        path = _cache_dir() / f"{kind}-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.so"
        lib = None
        if _cache_intact(path):
            try:
                lib = tvm.runtime.load_module(str(path))
            except Exception:  # an incompatible cache entry: rebuild it
                lib = None
        if lib is None:
            lib = _build(kind, *shape)
            _cache_write(lib, path)
        fn = lib["main"]
        _KERNELS[key] = fn
        return fn


def _row_tile(extent: int, choices: tuple[int, ...]) -> int:
    """A row tile dividing ``extent`` when one of ``choices`` does, else the first choice."""
    return next((r for r in choices if extent % r == 0), min(choices[0], extent))


def _hand_module(kind: str, *shape: int) -> Any:
    """The kernel's hand-scheduled IRModule: tile sizes per kind, computes from
    :func:`_computes`."""
    tensors = _computes(kind, *shape)
    base = kind.removesuffix("_lp")
    if base == "forward":
        cols, _ = _tile(shape[1])
        return _cpu_schedule(tensors, "acc", 1, 0, 6 if cols == 32 else 12, cols)
    if base == "grad_a":
        cols, _ = _tile(shape[2])
        return _cpu_schedule(tensors, "acc", 1, 0, 4 if cols == 32 else 8, cols)
    if base in ("conv_forward", "conv_mac_forward"):
        *_, wp, t, _, kw, stride, dil, g = shape
        ow = (wp - dil * (kw - 1) - 1) // stride + 1
        cols, _ = _tile(t // g)
        rows = _row_tile(ow, (7, 8, 6, 5, 4) if cols == 32 else (14, 12, 8, 7, 6))
        return _cpu_schedule(tensors, "acc", 3, 2, rows, cols, True)
    if base == "depthwise_forward":
        *_, wp, _, kw, stride, dil = shape
        ow = (wp - dil * (kw - 1) - 1) // stride + 1
        cols, _ = _tile(shape[1])
        return _cpu_schedule(tensors, "acc", 2, 2, _row_tile(ow, (8, 7, 6, 5, 4)), cols)
    if base == "int8_conv_forward":
        c = shape[3]
        return _int8_schedule(tensors, next(v for v in (64, 32, 16, 8, 4, 2, 1) if c % v == 0))
    if base == "binary_conv_forward":
        *_, t, _, kw, stride, dil = shape
        ow = (shape[2] - dil * (kw - 1) - 1) // stride + 1
        cols, _ = _tile(t)
        return _cpu_schedule(tensors, "acc", 3, 2, _row_tile(ow, (8, 7, 6, 5, 4)), cols)
    if base == "depthwise_grad_input":
        cols, _ = _tile(shape[1])
        return _cpu_schedule(tensors, "acc", 2, 2, _row_tile(shape[3], (4, 5, 6, 7, 3)), cols)
    _, c, _, wp, *_, g = shape  # conv_grad_input
    cols, _ = _tile(c // g)
    rows = _row_tile(wp, (4, 5, 3, 6) if cols == 32 else (8, 7, 6, 5, 4))
    return _cpu_schedule(tensors, "acc", 3, 2, rows, cols, True)


def _computes(kind: str, *shape: int) -> list[Any]:
    """The compute definition (tensors) behind kernel ``kind``."""
    lp = kind.endswith("_lp")
    base = kind.removesuffix("_lp")
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


def tuning_dir() -> Path:
    """Where tuning records live (``$XDG_CACHE_HOME/adderize/tuning``)."""
    return _cache_dir().parent / "tuning"


def _tuning_stamp() -> str:
    """Changes whenever the tuning database does (part of the kernel cache key)."""
    records = tuning_dir() / "database_tuning_record.json"
    return f"{records.stat().st_mtime_ns}" if records.is_file() else "untuned"


def tuned(kind: str, *shape: int) -> bool:
    """Whether the tuning database holds a schedule for this kernel."""
    return _tuned_module(kind, *shape) is not None


def _tuned_module(kind: str, *shape: int) -> Any | None:
    """The best MetaSchedule schedule recorded for this kernel, if the database has one."""
    records = tuning_dir() / "database_tuning_record.json"
    if not records.is_file():
        return None
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(tuning_dir()))
    mod = tvm.IRModule({"main": te.create_prim_func(_computes(kind, *shape))})
    sch = database.query_schedule(mod, _target(), workload_name="main")
    return None if sch is None else sch.mod


def _build(kind: str, *shape: int) -> Any:
    """Compile a kernel: the tuned schedule when the tuning database has one, else the
    hand schedule."""
    import tvm

    mod = _tuned_module(kind, *shape) or _hand_module(kind, *shape)
    return tvm.compile(mod, target=_target())


def workloads(run: Callable[[], Any]) -> list[tuple[Any, ...]]:
    """The kernels (``(kind, *shape)``) that ``run()`` uses, e.g. a forward and backward of
    a converted model, in first-use order: the tuning tasks of that model."""
    seen: dict[tuple[Any, ...], None] = {}
    _STATE["recording"] = seen
    try:
        run()
    finally:
        del _STATE["recording"]
    return list(seen)


def _warm_builder() -> None:
    """Builder-worker initializer: pay TVM's slow tensor-intrinsic import once per worker
    (about 77 s here) instead of timing out every build."""
    import tvm.s_tir.tensor_intrin  # noqa: F401


def tune(kind: str, *shape: int, trials: int = 64, timeout_sec: float = 60.0) -> Path:
    """Tune one kernel with MetaSchedule into the tuning database, which later builds of
    that kernel use (``~/.cache/adderize/tuning``; interrupted runs keep their records).

    ``kind`` and ``shape`` are those of the kernel cache (e.g. ``"conv_forward", N, C, Hp,
    Wp, T, kh, kw, stride, dilation, groups``). Returns the database directory.
    """
    import importlib.util

    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    if importlib.util.find_spec("psutil") is None:
        raise RuntimeError("MetaSchedule tuning needs psutil: pip install 'adderize[tune]'")
    # xgboost's cost model guides the search; without it the search samples at random
    cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
    work_dir = tuning_dir()
    work_dir.mkdir(parents=True, exist_ok=True)
    mod = tvm.IRModule({"main": te.create_prim_func(_computes(kind, *shape))})
    builder = ms.builder.LocalBuilder(
        max_workers=1, timeout_sec=timeout_sec, initializer=_warm_builder
    )
    ms.tir_integration.tune_tir(
        mod,
        _target(),
        str(work_dir),
        max_trials_global=trials,
        num_trials_per_iter=min(trials, 16),
        builder=builder,
        cost_model=cost_model,
    )
    _KERNELS.pop((kind, *shape), None)
    return work_dir


def _pad_last(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.shape[-1] == n else F.pad(x, (0, n - x.shape[-1]))


def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``-sum_k |a - b|`` for ``a: [G, M, K]``, ``b: [G, T, K]`` (float32, CPU) -> [G, M, T]."""
    groups, m, k = a.shape
    t = b.shape[1]
    _, tp = _tile(t)
    fn = _kernel("forward", m, tp, k)
    out = a.new_empty(groups, m, tp)
    for g in range(groups):
        fn(a[g].contiguous(), _pad_last(b[g].t(), tp).contiguous(), out[g])
    return out if tp == t else out[..., :t].contiguous()


def grad_a(a: torch.Tensor, b: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``sum_t G HardTanh(b - a)`` for ``a: [G, M, K]``, ``b: [G, T, K]``,
    ``grad_out: [G, M, T]`` (float32, CPU) -> [G, M, K]."""
    groups, m, k = a.shape
    t = b.shape[1]
    _, kp = _tile(k)
    fn = _kernel("grad_a", m, t, kp)
    out = a.new_empty(groups, m, kp)
    gs = grad_out.sum(2)
    for g in range(groups):
        fn(
            _pad_last(a[g], kp).contiguous(),
            _pad_last(b[g], kp).contiguous(),
            grad_out[g].contiguous(),
            gs[g].contiguous(),
            out[g],
        )
    return out if kp == k else out[..., :k].contiguous()


_PREPARED: dict[tuple[int, str], tuple[Any, int, tuple[torch.Tensor, ...]]] = {}


def _prepared(
    weight: torch.Tensor, kind: str, make: Callable[[], tuple[torch.Tensor, ...]]
) -> tuple[torch.Tensor, ...]:
    """Weight re-layouts, reused while the weight is the same tensor at the same version
    (inference, or the backward of the same step); a weak reference guards against reuse
    of a freed tensor's id."""
    key = (id(weight), kind)
    hit = _PREPARED.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == weight._version:
        return hit[2]
    value = make()
    if len(_PREPARED) > 512:
        _PREPARED.clear()
    _PREPARED[key] = (weakref.ref(weight), weight._version, value)
    return value


def conv_supported(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether the direct conv kernels apply: float32 CPU, and per-group in/out channels
    multiples of 8 (the vector tiles) or depthwise with channels a multiple of 8. Narrow
    grouped convs (e.g. ResNeXt's 4 channels per group) use the fallback."""
    if not (
        x.dtype == weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
    ):
        return False
    cg, tg = weight.shape[1], weight.shape[0] // groups
    return (cg % 8 == 0 and tg % 8 == 0) or _depthwise(weight, groups)


def _is_depthwise(t: int, cg: int, groups: int) -> bool:
    """One input and one output channel per group, channels a multiple of 8."""
    return cg == 1 and t == groups and groups % 8 == 0


def _depthwise(weight: torch.Tensor, groups: int) -> bool:
    return _is_depthwise(weight.shape[0], weight.shape[1], groups)


def forward_weight_layout(
    t: int, cg: int, kh: int, kw: int, groups: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(reshape, permutation) taking an OIHW conv weight to the forward kernels' layout:
    ``[kh, kw, C]`` for depthwise, ``[G, Cg, kh, kw, Tg]`` otherwise. The one definition
    shared by the training kernels and the compiled-model converter."""
    if _is_depthwise(t, cg, groups):
        return (t, kh, kw), (1, 2, 0)
    return (groups, t // groups, cg, kh, kw), (0, 2, 3, 4, 1)


def conv_forward(
    xp: torch.Tensor, weight: torch.Tensor, stride: int, dil: int, groups: int, p: float = 1.0
) -> torch.Tensor:
    """``-sum |X - W|^p`` adder conv of a padded NCHW input; the result is NCHW in
    channels-last memory (no copy). Depthwise convs use the channel-vectorised kernel;
    p != 1 uses the l_p kernels (p passed at run time, no recompilation)."""
    n, c, hp, wp = xp.shape
    t, cg, kh, kw = weight.shape
    tg = t // groups
    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
    dw = _depthwise(weight, groups)

    def prepare() -> tuple[torch.Tensor, ...]:
        shape, perm = forward_weight_layout(t, cg, kh, kw, groups)
        return (weight.detach().reshape(shape).permute(perm).contiguous(),)

    (wt,) = _prepared(weight, "forward", prepare)
    suffix, extra = ("", ()) if p == 1.0 else ("_lp", (float(p),))
    if dw:
        out = xp.new_empty(n, oh, ow, t)
        fn = _kernel("depthwise_forward" + suffix, n, c, hp, wp, kh, kw, stride, dil)
        fn(xp.permute(0, 2, 3, 1).contiguous(), wt, out, *extra)
        return out.permute(0, 3, 1, 2)
    out = xp.new_empty(n, oh, ow, groups, tg)
    fn = _kernel("conv_forward" + suffix, n, c, hp, wp, t, kh, kw, stride, dil, groups)
    fn(xp.contiguous(), wt, out, *extra)
    return out.view(n, oh, ow, t).permute(0, 3, 1, 2)


def conv_grad_input(
    xp: torch.Tensor,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    stride: int,
    dil: int,
    groups: int,
    p: float = 1.0,
) -> torch.Tensor:
    """Eq. 27 input gradient of :func:`conv_forward` w.r.t. the padded input."""
    n, c, hp, wp = xp.shape
    t, cg, kh, kw = weight.shape
    tg = t // groups
    oh, ow = grad_out.shape[-2:]
    top, left = dil * (kh - 1), dil * (kw - 1)
    gd = grad_out.new_zeros(n, hp + top, wp + left, t)
    gd[
        :, top : top + (oh - 1) * stride + 1 : stride, left : left + (ow - 1) * stride + 1 : stride
    ] = grad_out.permute(0, 2, 3, 1)
    dw = _depthwise(weight, groups)

    def prepare() -> tuple[torch.Tensor, ...]:
        w = weight.detach()
        if dw:
            return (w.reshape(t, kh, kw).permute(1, 2, 0).contiguous(),)
        return (w.reshape(groups, tg, cg, kh, kw).permute(0, 3, 4, 1, 2).contiguous(),)

    (wt,) = _prepared(weight, "grad_input", prepare)
    xn = xp.permute(0, 2, 3, 1).contiguous()
    if p == 1.0:  # HardTanh form: needs the window sums of the gradient
        ones = weight.new_ones(groups, 1, kh, kw)
        gsum = gd.view(n, hp + top, wp + left, groups, tg).sum(-1).permute(0, 3, 1, 2)
        gs = F.conv2d(gsum, ones, dilation=dil, groups=groups).permute(0, 2, 3, 1).contiguous()
        suffix, args = "", (gs,)
    else:
        suffix, args = "_lp", ()
    extra = () if p == 1.0 else (float(p),)
    if dw:
        out = xp.new_empty(n, hp, wp, c)
        fn = _kernel("depthwise_grad_input" + suffix, n, c, hp, wp, kh, kw, dil)
        fn(xn, wt, gd, *args, out, *extra)
        return out.permute(0, 3, 1, 2)
    out = xp.new_empty(n, hp, wp, groups, cg)
    fn = _kernel("conv_grad_input" + suffix, n, c, hp, wp, t, kh, kw, dil, groups)
    fn(xn, wt, gd, *args, out, *extra)
    return out.view(n, hp, wp, c).permute(0, 3, 1, 2)


def cuda_executable(kind: str, m: int, t: int, k: int, arch: str = "sm_80") -> Any:
    """The same compute built for CUDA (``arch`` sm_80 / sm_90, ...) with TVM's default GPU
    schedule; compiles without a GPU. Returns the TVM Executable."""
    import tvm
    from tvm import te
    from tvm.s_tir import dlight

    tensors = (l1_forward_compute if kind == "forward" else l1_grad_a_compute)(m, t, k)
    mod = tvm.IRModule({"main": te.create_prim_func(tensors)})
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    with target:
        mod = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(mod)
    return tvm.compile(mod, target=target)
