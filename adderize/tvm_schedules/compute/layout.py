"""Weight re-layouts of the training kernels, as kernels of their own."""

from __future__ import annotations

from typing import Any

__all__ = ["transpose_compute"]


def transpose_compute(g: int, t: int, r: int) -> list[Any]:
    """``out[g, r, t] = w[g, t, r]``: a batch of matrix transposes. Every weight re-layout
    of the conv kernels is one (OIHW -> ``[G, Cg, kh, kw, Tg]`` for the forward, ->
    ``[G, kh, kw, Tg, Cg]`` for the input gradient); PyTorch's strided copy takes 4x longer
    on a 512 x 4608 weight than a blocked transpose. Shapes: w [G, T, R] -> out [G, R, T]."""
    from tvm import te

    w = te.placeholder((g, t, r), name="w")
    out = te.compute((g, r, t), lambda a, i, j: w[a, j, i], name="out", tag="transpose")
    return [w, out]
