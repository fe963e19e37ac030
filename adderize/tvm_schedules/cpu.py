"""CPU schedule building blocks of the adder computes, and the candidate tiles measured at
first use (each kind picks its blocks in :mod:`adderize.tvm_schedules.kinds`; the fixed
schedules are in :mod:`adderize.tvm_schedules.fixed`).

Every float kernel (dense, depthwise, row-GEMM; forward and input gradient; l_1 and l_p)
uses one register-blocked schedule (:func:`register_tile`): a tile of ``rows`` output
positions (unrolled) x ``cols`` output channels (vectorised) of accumulators kept in
registers, the reduction outside the tile, the epilogue fused, outer loops parallel. Which
tile is fastest depends on the CPU (32 vector registers of 16 lanes with AVX-512, 16 of 8
with AVX2; how many FP-add ports) and on the shape, so :func:`register_candidates` lists a few
tiles (the hand-measured one, tiles that fit the machine's register file, both loop
orders), and the kernel builder
(:mod:`adderize.tvm_schedules.build`) times them once per shape on this machine and caches
the winner with the kernel. MetaSchedule tuning (:mod:`adderize.tvm_schedules.tuning`)
replaces the choice where the tuning database has a record.

The p = 1 dense conv forwards also time other inner loops (:data:`~adderize.tvm_schedules
.compute.FORMS`): ``fma`` (``sub, and, fma``: the accumulation on the FMA ports, 17% faster
on AVX-512 Zen 5, where adds and FMAs have two ports each) and ``maxfma`` (``|x - w| =
2 max(x, w) - x - w``, accumulated by FMAs: ``max, fma`` per term, on Zen 4 one 512-bit
term per cycle against 1.6 for ``sub, and, fma``; the window and filter sums are passes of
their own; 512 -> 512 3x3 @7, batch 32: 56 -> 42 ms). ``max`` (``max, add``) stands in
for it on CPUs without FMA. Which wins is measured, as the tile is. The NCHW depthwise
forward also times its ``channels`` forms (16-channel blocks vectorised,
:func:`channel_tile`; ``channels_fma`` accumulates by FMAs, 1152 ch 5x5 @7, batch 32:
1.6 -> 1.4 ms) against the plane tiles where the channels come in blocks of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adderize.tvm_schedules import int8
from adderize.tvm_schedules.compute import CHANNEL_BLOCK, out_size
from adderize.tvm_schedules.target import cpu_isa

__all__ = [
    "CHANNEL_FORMS",
    "HandTile",
    "TileLayout",
    "Variant",
    "channel_tile",
    "depthwise_plane_tiles",
    "fma_form",
    "int8_schedule",
    "int8_tiles",
    "plane_tiles",
    "pointwise_tiles",
    "register_candidates",
    "register_tile",
    "tile",
    "vector_lanes",
]

#: the NCHW depthwise forward's channel-vectorised forms (:func:`channel_tile`)
CHANNEL_FORMS = ("channels", "channels_fma")
#: at most this many candidates are timed per kernel (a few ms to compile each)
MAX_CANDIDATES = 10
#: the max forms (``max``/``maxfma``) are candidates from this many terms per output on:
#: they save one op per term but pass over the output once more (adding the side terms),
#: which below costs about what it saves, and far more once the output leaves the cache.
#: Zen 4, batch 1, 64 -> 256 1x1 @56 (64 terms, 3.2 MB out): maxfma 862-1470 us against
#: 964-986 us for the abs form, depending on the machine's load when timed; the pick at
#: first use holds for good. 128 -> 128 3x3 @28 (1152 terms): 1321 against 2033 us
MAX_FORM_MIN_TERMS = 128


def vector_lanes() -> int:
    """float32 lanes of this CPU's widest vectors: 16 (AVX-512), 8 (AVX2), else 4."""
    isa = cpu_isa()
    return 16 if "avx512f" in isa else 8 if "avx2" in isa else 4


def tile(n: int) -> tuple[int, int]:
    """(vector tile, padded extent) for a dimension the row-GEMM kernels vectorise: the
    python wrappers pad it to a multiple of 8 (16 when not a multiple of 8)."""
    for t in (32, 16, 8):
        if n % t == 0:
            return t, n
    return 16, -(-n // 16) * 16


@dataclass(frozen=True)
class Variant:
    """One register tile: ``rows`` positions x ``cols`` channels; ``cols_outer`` runs the
    column tiles outermost (a weight slice stays in cache over all positions)."""

    rows: int
    cols: int
    cols_outer: bool
    #: the inner loop: conv forward p = 1, see compute.FORMS ("fma" kernels take a trailing
    #: input ``one`` = [1.0] before ``out``: build.py binds it); int8: "sad" (the byte-SAD
    #: instruction, see tvm_schedules.int8) or "plain"
    form: str = "abs"

    def __str__(self) -> str:
        outer = "/cols-outer" if self.cols_outer else ""
        return f"{self.rows}x{self.cols}{outer}{'' if self.form == 'abs' else '/' + self.form}"


@dataclass(frozen=True)
class TileLayout:
    """Where a kind's register tile sits in its compute's loops (each kind's ``layout`` in
    :mod:`~adderize.tvm_schedules.kinds` gives it for a shape)."""

    n_reduce: int  # reduction loops of the "acc" block
    row_axis: int  # spatial loop tiled by rows
    row_extent: int
    col_extent: int  # the last spatial loop, tiled by cols
    cols_outer: bool  # the default loop order
    grad: bool  # input-gradient kernels keep more values live per row


@dataclass(frozen=True)
class HandTile:
    """A kind's first-guess tile, chosen by hand on AVX-512 (Zen 5): the first of ``wide``
    (32-wide column tiles) or ``narrow`` row counts that divides the rows (``divide``),
    else the first as it is."""

    wide: tuple[int, ...]
    narrow: tuple[int, ...]
    divide: bool = True

    def variant(self, lay: TileLayout) -> Variant:
        cols = tile(lay.col_extent)[0]
        choices = self.wide if cols == 32 else self.narrow
        rows = choices[0]
        if self.divide:
            ext = lay.row_extent
            rows = next((r for r in choices if ext % r == 0), min(choices[0], ext))
        return Variant(rows, cols, lay.cols_outer)


#: unrolled rows per tile at most (code size)
MAX_ROWS = 14


def _rows(extent: int, most: int) -> list[int]:
    """Row tiles up to ``most``: the largest dividing ``extent`` (no tail), and ``most``
    itself when that divisor is much smaller (a tail, but more accumulators); a divisor
    below half of ``most`` is dropped."""
    most = max(1, min(most, extent, MAX_ROWS))
    divisor = next(r for r in range(most, 0, -1) if extent % r == 0)
    if divisor * 4 >= most * 3:
        return [divisor]
    return [most, divisor] if divisor * 2 >= most else [most]


def fma_form(lp: bool = False) -> bool:
    """Whether a kernel gets the inner loops accumulated by FMAs: p = 1 kernels on CPUs
    with FMA instructions."""
    return "fma" in cpu_isa() and not lp


def register_candidates(
    lay: TileLayout, hand: HandTile, lanes: int, form_terms: int | None = None
) -> list[Variant]:
    """Register tiles for a kernel laid out as ``lay``, best guess first (at most
    :data:`MAX_CANDIDATES`).

    The first is the ``hand`` tile (the ``first`` selection mode keeps it). The others fit
    this CPU's register file: with ``v = cols / lanes`` vectors per row a tile holds
    ``rows * v`` accumulators besides the ``v`` weight vectors and a few temporaries (more
    for input gradients, which keep ``x - 1``, ``x + 1`` and the gradient per row).
    Convolutions also get the other loop order of the two leading tiles (column tiles
    outermost or not: 2x apart on 1x1 convs on AVX2 Zen 3, either way round on other
    shapes), and, given ``form_terms`` (the terms per output of a p = 1 dense forward), the
    other forms of the inner loop, ``fma`` and (from :data:`MAX_FORM_MIN_TERMS` terms on)
    ``maxfma``, on the leading tiles in both loop orders (256 -> 256 3x3 @14, batch 32: fma
    10% faster with the column tiles inside; Zen 4).
    """
    regs = 32 if lanes >= 16 else 16
    reserve = 5 if lay.grad else 3
    fitted: list[Variant] = []
    for cols in (16, 32, 8, 24, 48, 64):
        if lay.col_extent % cols or cols > 4 * lanes:
            continue
        v = -(-cols // lanes)
        most = (regs - reserve - v) // v
        if lay.grad:
            most = min(most, (regs - reserve) // (v + 1))
        fitted += [Variant(r, cols, lay.cols_outer) for r in _rows(lay.row_extent, most)]
    found = [hand.variant(lay), *fitted[:1]]
    if lay.n_reduce == 3:  # dense convs: both loop orders
        found += [Variant(c.rows, c.cols, not c.cols_outer) for c in found]
    if form_terms is not None:  # the other inner loops, on the leading tiles in both orders
        lead = found
        maxes = "maxfma" if fma_form() else "max"
        forms = [maxes, "fma"] if form_terms >= MAX_FORM_MIN_TERMS else ["fma"]
        found = [*lead, *(Variant(v.rows, v.cols, v.cols_outer, f) for f in forms for v in lead)]
    found += fitted[1:]
    return list(dict.fromkeys(found))[:MAX_CANDIDATES]


def depthwise_plane_tiles(
    lay: TileLayout, lanes: int, channels: int, kh: int, kw: int, fma: bool
) -> list[Variant]:
    """Tiles of the NCHW depthwise forward: the plane tiles (:func:`plane_tiles`), and
    where the channels come in blocks of 16, the channel-vectorised forms
    (:func:`channel_tile`; with ``fma``, also accumulated by FMAs)."""
    planes = plane_tiles(lay, lanes)
    # the channel tile splits the output rows and taps: compute_at drops loops of
    # extent 1 (a 1-wide output or kernel), which it has no schedule for
    if channels % CHANNEL_BLOCK or min(lay.row_extent, lay.col_extent, kh, kw) < 2:
        return planes
    # channel blocks: a whole output row per tile where it fits the registers
    rows = _rows(lay.col_extent, 8)
    forms = list(CHANNEL_FORMS) if fma else ["channels"]
    blocks = [Variant(r, CHANNEL_BLOCK, False, f) for f in forms for r in rows]
    return planes[: MAX_CANDIDATES - len(blocks)] + blocks


def int8_tiles(shape: tuple[int, ...]) -> list[Variant]:
    """Tiles of the int8 kernel (:func:`adderize.tvm_schedules.int8.candidates`), with the
    byte-SAD instruction where this CPU has it for the group."""
    _, _, wp, _, t, _, kw, stride, dil, group = shape
    form = "sad" if int8.sad_group() >= group else "plain"
    ow = out_size(wp, kw, stride, dil)
    return [Variant(r, c, False, form) for r, c in int8.candidates(ow, t, group)]


def int8_schedule(tensors: list[Any], variant: Variant, group: int) -> Any:
    return int8.schedule(tensors, variant.rows, variant.cols, group, variant.form == "sad")


def pointwise_tiles(lay: TileLayout, lanes: int, batch: int, fma: bool) -> list[Variant]:
    """Tiles of the pointwise NCHW forward: few output channels (unrolled, each weight a
    broadcast) x 16 or 32 positions (vectorised), both forms; at batch 1 the position
    tiles run in parallel (column tiles outermost), else either order. Small tiles
    measured best (Zen 4, 4 x 16 with FMAs: 16 -> 96 @112, batch 1, 445 -> 347 us and
    batch 32, 18.0 -> 9.4 ms against the dense kernel; 64 -> 256 @56, batch 1, 940 ->
    712 us), the input vectors staying in L1 while the weight broadcasts stream."""
    t, m = lay.row_extent, lay.col_extent
    rows = [r for r in (4, 8, 12, 6, 2, 1) if t % r == 0][:2]
    widths = [w for w in (16, 32) if m % w == 0 and w <= 4 * lanes]
    tiles = [(rows[0], w) for w in widths] + [(r, widths[0]) for r in rows[1:]]
    orders = [True] if batch == 1 else [False, True]
    forms = ["abs", "fma"] if fma else ["abs"]
    found = [Variant(r, w, o, f) for f in forms for o in orders for r, w in tiles]
    return found[:MAX_CANDIDATES]


def plane_tiles(lay: TileLayout, lanes: int) -> list[Variant]:
    """Tiles of the NCHW depthwise kernels (forward and input gradient), whose columns are
    positions of one channel's plane: a whole row when it fits four vectors (a 7- or
    14-wide row wastes at most one partial vector), else a divisor of the row; a few rows
    each (the weight is a broadcast scalar per tap, so few registers are live; 1-4 rows
    measured best, depending on the kernel size)."""
    ow, oh = lay.col_extent, lay.row_extent
    if ow <= 4 * lanes:
        widths = [ow]
    else:
        widths = [d for d in (4 * lanes, 2 * lanes, lanes) if ow % d == 0] or [
            max(d for d in range(1, 4 * lanes + 1) if ow % d == 0)
        ]
    rows = dict.fromkeys(min(r, oh) for r in (2, 1, 4, 7))
    return [Variant(r, w, False) for w in widths[:2] for r in rows][:MAX_CANDIDATES]


def channel_tile(tensors: list[Any], rows: int) -> Any:
    """Schedule of the channel-vectorised depthwise forward
    (:func:`~adderize.tvm_schedules.compute.depthwise_forward_nchw_compute`, ``channels``):
    per image and channel block (in parallel), the padded input and the weights staged, then
    tiles of ``rows`` output positions x 16 channels of accumulators, the taps outside the
    tile (columns unrolled, so the staged vectors are loaded once per row), and the block
    written back along the output rows. 1152 channels 5x5 @7, batch 32: 1.6 ms against
    2.4 ms for the plane kernel (Zen 4)."""
    from tvm import s_tir, te

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    out, acc = sch.get_sblock("out"), sch.get_sblock("acc")
    b, c, y, z = sch.get_loops(out)
    co, ci = sch.split(c, [None, CHANNEL_BLOCK])
    sch.reorder(b, co, ci, y, z)
    block = sch.fuse(b, co)
    sch.parallel(block)
    sch.vectorize(z)
    for stage in ("acc", "pad", "wv"):
        sch.compute_at(sch.get_sblock(stage), block)
    _, ay, az, lane, ri, rj = sch.get_loops(acc)
    zo, zi = sch.split(az, [None, rows])
    sch.reorder(ay, zo, ri, rj, zi, lane)
    sch.unroll(rj)
    sch.unroll(zi)
    sch.vectorize(lane)
    sch.decompose_reduction(acc, ri)
    sch.vectorize(sch.get_loops(sch.get_sblock("acc_init"))[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock("pad"))[-1])
    return sch.mod


def _sums(sch: Any) -> None:
    """The max forms' side terms, each a stage before the main loop with its reduction
    outside a vectorised last axis: channel sums of the input (images x groups in
    parallel), their window sums, and the filter sums of the weight; and the pass after
    the tiles that adds them to the output."""
    for stage, n_spatial, parallel in (("xc", 4, True), ("xs", 4, True), ("ws", 2, False)):
        blk = sch.get_sblock(stage)
        loops = sch.get_loops(blk)
        spatial, red = loops[:n_spatial], loops[n_spatial:]
        sch.reorder(*spatial[:-1], *red, spatial[-1])
        if parallel:
            sch.parallel(sch.fuse(spatial[0], spatial[1]))
        sch.vectorize(spatial[-1])
        sch.decompose_reduction(blk, red[0])
        sch.vectorize(sch.get_loops(sch.get_sblock(f"{stage}_init"))[-1])
    loops = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(sch.fuse(*loops[:2]))
    sch.vectorize(loops[-1])


def register_tile(tensors: list[Any], n_reduce: int, row_axis: int, variant: Variant) -> Any:
    """Register-blocked schedule of the ``acc`` block (its last ``n_reduce`` loops reduce): a
    tile of ``rows`` (spatial axis ``row_axis``, unrolled) x ``cols`` (last spatial axis,
    vectorised) accumulators kept local, reduction loops outside the tile, the ``out``
    epilogue fused into the tile, outer loops in parallel.

    ``cols_outer`` puts the column-tile loop (and the spatial axes between rows and columns)
    above every other spatial loop, so the weight slice of one column tile stays in cache
    while all positions are computed (convolutions with large weights).
    """
    from tvm import s_tir, te

    rows, cols, cols_outer = variant.rows, variant.cols, variant.cols_outer
    sch = s_tir.Schedule(te.create_prim_func(tensors))
    blk = sch.get_sblock("acc")
    loops = sch.get_loops(blk)
    spatial, red = loops[: len(loops) - n_reduce], loops[len(loops) - n_reduce :]
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
    max_form = variant.form in ("max", "maxfma")
    out = sch.get_sblock("tiles" if max_form else "out")
    sch.reverse_compute_at(out, anchor)
    if max_form:
        _sums(sch)
    sch.set_scope(blk, 0, "local")
    sch.vectorize(ci)
    if ri is not None:
        sch.unroll(ri)
    sch.vectorize(sch.get_loops(out)[-1])
    outer = sch.fuse(*parallel) if len(parallel) > 1 else parallel[0]
    if any(sch.get(b).name_hint == "pad" for b in sch.get_child_blocks(sch.get_sblock("root"))):
        # padding inside the kernel: one channel plane at a time, while it is in cache
        pad = sch.get_sblock("pad")
        sch.compute_at(pad, outer)
        sch.vectorize(sch.get_loops(pad)[-1])
    sch.parallel(outer)
    sch.decompose_reduction(blk, red[0])
    sch.vectorize(sch.get_loops(sch.get_sblock("acc_init"))[-1])
    return sch.mod
