"""CPU schedule of the int8 adder conv: byte sums of absolute differences.

x86 has the primitive the int8 adder needs: ``psadbw`` sums ``|a - b|`` over groups of 8
unsigned bytes into 64-bit lanes (2 lanes per SSE2 instruction, 4 with AVX2, 8 with
AVX-512BW), so one instruction and one 64-bit add do ``8 * group`` byte terms, 4x the
lanes of an fp32 FMA. LLVM does not form it from a vectorised ``max - min`` reduction, so
the kernel calls it: the compute groups its channel sum the same way
(:func:`~adderize.tvm_schedules.compute.int8_conv_forward_compute`), and the innermost
(group, byte) loops are tensorized (:func:`intrinsic`) to one ``psadbw`` added into a
vector of int64 accumulators.

The schedule is a register tile: ``rows`` output positions x ``cols`` output channels of
accumulator vectors; each input vector is loaded once per tile row and serves ``cols``
channels, each weight vector serves ``rows`` positions; the reduction (kernel window and
channel chunks) runs inside the tile, the horizontal sum of the lanes after it. Which tile
is fastest depends on the register file (16 or 32 vector registers) and the shape, so
:func:`candidates` lists a few, timed once per shape by the kernel builder. On CPUs
without the instruction the same tile is built without the intrinsic (portable, slower).
"""

from __future__ import annotations

import platform
from typing import Any

from adderize.tvm_schedules.target import cpu_isa

__all__ = ["SAD_INSTRUCTIONS", "candidates", "intrinsic", "sad_group", "schedule"]

#: LLVM's byte-SAD intrinsic by lanes (64-bit sums of 8 bytes) per instruction
SAD_INSTRUCTIONS = {
    2: "llvm.x86.sse2.psad.bw",
    4: "llvm.x86.avx2.psad.bw",
    8: "llvm.x86.avx512.psad.bw.512",
}
#: at most this many tiles are timed per kernel
MAX_CANDIDATES = 6


def sad_group() -> int:
    """64-bit lanes of this CPU's widest byte-SAD instruction (8 AVX-512BW, 4 AVX2, 2 any
    x86-64), or 0 when it has none (the kernel then runs without it, in groups of 4)."""
    isa = cpu_isa()
    if "avx512bw" in isa:
        return 8
    if "avx2" in isa:
        return 4
    return 2 if platform.machine().lower() in ("x86_64", "amd64") else 0


def intrinsic(group: int) -> str:
    """Register (once) and name the tensor intrinsic: ``C[g] += sum_k |A[8 g + k] -
    B[8 g + k]|`` over ``group`` int64 lanes, as one ``psadbw`` and one 64-bit vector add."""
    from tvm import s_tir
    from tvm.script import tirx as T

    name = f"adderize_sad_{group}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    width = 8 * group
    bytes_t, sums_t = f"uint8x{width}", f"int64x{group}"

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((width,), "uint8", offset_factor=1),
        b: T.Buffer((width,), "uint8", offset_factor=1),
        c: T.Buffer((group,), "int64", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:group], a[0:width], b[0:width])
            T.writes(c[0:group])
            for g, k in T.grid(group, 8):
                with T.sblock("update"):
                    vg, vk = T.axis.remap("SR", [g, k])
                    c[vg] = c[vg] + T.Cast(
                        "int64",
                        T.max(a[vg * 8 + vk], b[vg * 8 + vk])
                        - T.min(a[vg * 8 + vk], b[vg * 8 + vk]),
                    )

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((width,), "uint8", offset_factor=1),
        b: T.Buffer((width,), "uint8", offset_factor=1),
        c: T.Buffer((group,), "int64", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:group], a[0:width], b[0:width])
            T.writes(c[0:group])
            c[T.ramp(T.int32(0), 1, group)] = c.vload([0], sums_t) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(SAD_INSTRUCTIONS[group]),
                a.vload([0], bytes_t),
                b.vload([0], bytes_t),
                dtype=sums_t,
            )

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


def _divisor(extent: int, most: int) -> int:
    return next(r for r in range(min(most, extent), 0, -1) if extent % r == 0)


def candidates(ow: int, t: int, group: int) -> list[tuple[int, int]]:
    """(rows, cols) register tiles for an output ``ow`` wide with ``t`` channels, best guess
    first: rows divide ``ow`` and cols divide ``t`` (a tensorized loop cannot have a tail).
    An accumulator vector per tile cell, plus a vector per row and per column in flight:
    16 registers (AVX2 and narrower) fit 4 x 2 or 3 x 3, 32 (AVX-512) 4 x 4 or 6 x 3."""
    wide = group >= 8
    tiles = ((4, 4), (6, 3), (3, 6), (7, 2), (8, 2)) if wide else ((4, 2), (2, 4), (3, 3))
    tiles += ((3, 4), (7, 1), (1, 7))
    found = [(_divisor(ow, r), _divisor(t, c)) for r, c in tiles]
    return list(dict.fromkeys(found))[:MAX_CANDIDATES]


def schedule(tensors: list[Any], rows: int, cols: int, group: int, sad: bool = True) -> Any:
    """The register-tiled schedule of the int8 compute (``tensors``) with a ``rows`` x
    ``cols`` tile; ``sad``: tensorize the (group, byte) loops with :func:`intrinsic`."""
    from tvm import s_tir, te

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    out = sch.get_sblock("out")
    b, y, z, o = sch.get_loops(out)
    zo, zi = sch.split(z, [None, rows])
    oo, oi = sch.split(o, [None, cols])
    sch.reorder(b, y, zo, oo, zi, oi)
    part = sch.get_sblock("part")
    sch.compute_at(part, oo)
    sch.set_scope(part, 0, "local")
    anchor = sch.get(oo)
    depth = 1 + next(i for i, lp in enumerate(sch.get_loops(out)) if sch.get(lp).same_as(anchor))
    loops = sch.get_loops(part)[depth:]  # the tile's loops, then the reduction's
    # (loops of extent 1 are not generated)
    n_red = sum(int(v.dom.extent) > 1 for v in sch.get(part).iter_vars if v.iter_type == 2)
    tile, red = loops[: len(loops) - n_red], loops[len(loops) - n_red :]
    sch.reorder(*red[:-1], *tile, red[-1])  # window, chunks | rows, cols, group | byte
    for lp in tile[:-1]:
        sch.unroll(lp)
    sch.parallel(sch.fuse(b, y))
    sch.decompose_reduction(part, red[0] if len(red) > 1 else tile[0])
    if sad:
        sch.tensorize(tile[-1], intrinsic(group))
    return sch.mod
