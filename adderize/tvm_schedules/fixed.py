"""The fixed CPU schedules: kernels with one schedule and no candidates to time (the
weight transposes and the one-position squeeze-excite kernels, both a few microseconds)."""

from __future__ import annotations

from typing import Any

from adderize.tvm_schedules.cpu import vector_lanes

__all__ = ["TRANSPOSE_SERIAL_MAX", "one_position_schedule", "transpose_schedule"]


#: transposes of at most this many values run on one thread
TRANSPOSE_SERIAL_MAX = 1 << 18


def _block(n: int) -> int:
    """A block edge for ``n``: 16 where it divides, else the largest power of two that does
    (``n`` itself up to 16: a 3x3 kernel's 9 taps)."""
    if n <= 16:
        return n
    return next(b for b in (16, 8, 4, 2, 1) if n % b == 0)


def transpose_schedule(tensors: list[Any]) -> Any:
    """The batched transpose (:func:`~adderize.tvm_schedules.compute.transpose_compute`) in
    blocks of up to 16 x 16 that stay in L1, rows unrolled and columns vectorised, blocks in
    parallel (a 512 x 4608 weight: 0.62 ms against 2.7 ms for PyTorch's permute-copy; Zen 4)
    above :data:`TRANSPOSE_SERIAL_MAX` values, on the calling thread below (waking the pool
    costs more there: 128 x 1152, 37 us serial against 55 us in parallel)."""
    from tvm import s_tir, te

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    blk = sch.get_sblock("out")
    lg, i, j = sch.get_loops(blk)
    g, r, t = (int(d) for d in tensors[1].shape)
    io, ii = sch.split(i, [None, _block(r)])
    jo, ji = sch.split(j, [None, _block(t)])
    sch.reorder(lg, io, jo, ii, ji)
    if g * r * t > TRANSPOSE_SERIAL_MAX:
        sch.parallel(sch.fuse(lg, io, jo))
    sch.unroll(ii)
    sch.vectorize(ji)
    return sch.mod


def one_position_schedule(backward: bool, tensors: list[Any]) -> Any:
    """The one-position kernels (:func:`~adderize.tvm_schedules.compute.dense
    .one_position_forward_compute`), on the calling thread: a batch-1 squeeze-excite
    layer's 55K terms take microseconds, less than waking the pool. The forward's sums
    along the weight's rows as vector partial sums (rfactor), added up at the end; the
    backward's weight gradient row by row, and its input gradient over blocks of channels
    with the rows reduced into vector accumulators (``benchmarks/small_kernels.py``, Zen 4,
    48 x 1152: forward 3.3 us, both gradients 8.5 us, against 12.4 and 34.8 us for the
    same arithmetic as torch ops)."""
    from tvm import s_tir, te

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    c = int(tensors[0].shape[0])
    lanes = next(n for n in (16, 8, 4, 2, 1) if n <= vector_lanes() and c % n == 0)
    if not backward:
        acc = sch.get_sblock("acc")
        _, r = sch.get_loops(acc)
        # at least 4 vectors a row: the partial sums' final add costs more than a row of
        # 3 (1152 -> 48 rows of 48 channels: 9.4 us with 16 lanes, 3.8 us with 8)
        part = next(n for n in (16, 8, 4, 2, 1) if n <= lanes and c % n == 0 and c >= 4 * n)
        rf = sch.rfactor(sch.split(r, [None, part])[1], 1)
        sch.vectorize(sch.get_loops(rf)[-1])
        sch.decompose_reduction(rf, sch.get_loops(rf)[1])
        return sch.mod
    _, j = sch.get_loops(sch.get_sblock("grad_w"))
    sch.vectorize(sch.split(j, [None, lanes])[1])
    grad_x = sch.get_sblock("grad_x")
    j, r = sch.get_loops(grad_x)
    jo, ji = sch.split(j, [None, 4 * lanes if c % (4 * lanes) == 0 else lanes])
    sch.reorder(jo, r, ji)
    sch.vectorize(ji)
    sch.decompose_reduction(grad_x, r)
    return sch.mod
