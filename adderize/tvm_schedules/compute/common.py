"""Shared pieces of the compute definitions: conv geometry and the l_p terms."""

from __future__ import annotations

from typing import Any

__all__ = ["lp_terms", "out_size", "pow_nonneg"]

_LN2 = 0.6931471805599453


def out_size(size: int, k: int, stride: int, dil: int) -> int:
    """Output length of a convolution over an already padded ``size``."""
    return (size - dil * (k - 1) - 1) // stride + 1


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


def lp_terms(lp: bool) -> tuple[Any, Any, Any]:
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
