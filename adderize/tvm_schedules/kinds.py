"""The table of kernel kinds, and the typed workload that names one kernel.

A kernel is a :class:`Workload`: its kind, its shape (the ints its compute takes, named by
the kind's ``fields``) and whether it computes ``|d|^p`` (l_p, with ``p`` passed at run
time) instead of ``|d|``. Each :class:`Kind` declares, in one place, everything the rest
of the stack reads about it: its compute, its layout for the register-tile schedule (or
its own candidates and schedule, or a fixed schedule), its first-guess tile, and its
flags (l_p variant, inner-loop forms, tuning task, family in the compiled-model report).
:func:`candidates`, :func:`schedule` and :func:`computes` dispatch on the table;
``build``, ``tuning`` and ``adderize.deploy`` only see workloads.

Adding a kind is a compute (``compute/``), a schedule where the generic register tile does
not fit (``cpu.py``), and one :func:`register_kind` call (here, or in a test:
``tests/test_kernel_kinds.py`` registers a toy kind and builds it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from adderize._errors import AdderizeError
from adderize.tvm_schedules import cpu, fixed
from adderize.tvm_schedules.compute import FORMS, dense, depthwise, layout, lowbit
from adderize.tvm_schedules.compute.common import out_size
from adderize.tvm_schedules.cpu import HandTile, TileLayout, Variant

__all__ = [
    "KINDS",
    "Kind",
    "Workload",
    "candidates",
    "computes",
    "register_kind",
    "registered",
    "schedule",
]


@dataclass(frozen=True)
class Kind:
    """One kernel kind: what every consumer needs to know about it."""

    name: str
    #: the shape's fields, in the compute's argument order
    fields: tuple[str, ...]
    #: ``compute(*shape, lp=..., form=...) -> tensors`` (``lp`` / ``form`` only where the
    #: kind has them)
    compute: Callable[..., list[Any]]
    #: has an l_p variant (``Workload.lp``)
    lp: bool = False
    #: the inner-loop forms its compute takes besides ``abs`` (compute.FORMS); the generic
    #: candidates time them on p = 1 kernels
    forms: tuple[str, ...] = ()
    #: register-tile schedule: where the tile sits (``layout(shape)``), the hand tile
    layout: Callable[[tuple[int, ...]], TileLayout] | None = None
    hand: HandTile | None = None
    #: own candidate list ``(workload, lanes) -> [Variant]`` instead of the fitted tiles
    own_candidates: Callable[[Workload, int], list[Variant]] | None = None
    #: own schedule of a variant ``(workload, variant) -> IRModule``
    own_schedule: Callable[[Workload, Variant], Any] | None = None
    #: a fixed schedule ``(workload, tensors) -> IRModule`` (no candidates, no timing)
    fixed: Callable[[Workload, list[Any]], Any] | None = None
    #: a MetaSchedule tuning task (``build.workloads`` lists it)
    tuned: bool = True
    #: its family in the compiled-model report
    family: str = "adder"

    @property
    def selectable(self) -> bool:
        """Whether its candidates are timed at first use (else one fixed schedule)."""
        return self.fixed is None


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add ``kind`` to the table; its name must be new."""
    if kind.name in KINDS:
        raise AdderizeError(f"kernel kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


@contextlib.contextmanager
def registered(kind: Kind) -> Iterator[Kind]:
    """``register_kind(kind)`` for the ``with`` block only (a test's toy kind)."""
    register_kind(kind)
    try:
        yield kind
    finally:
        KINDS.pop(kind.name, None)


@dataclass(frozen=True)
class Workload:
    """One kernel: ``kind``, ``shape`` (ints, the kind's fields) and l_p or not."""

    kind: str
    shape: tuple[int, ...]
    lp: bool = False

    def __post_init__(self) -> None:
        spec = KINDS.get(self.kind)
        if spec is None:
            raise AdderizeError(f"unknown kernel kind {self.kind!r}; known: {sorted(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.shape) != len(spec.fields):
            raise AdderizeError(
                f"kernel {self.kind} takes {len(spec.fields)} ints {spec.fields}, got {self.shape}"
            )
        if self.lp and not spec.lp:
            raise AdderizeError(f"kernel {self.kind} has no l_p variant")

    @classmethod
    def of(cls, kind: str, *shape: int, lp: bool = False) -> Workload:
        return cls(kind, tuple(shape), lp)

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]

    @property
    def name(self) -> str:
        """The kind as the kernel cache and the tuning database name it."""
        return self.kind + ("_lp" if self.lp else "")

    def __getitem__(self, field_name: str) -> int:
        """A shape field by name: ``w["stride"]``."""
        return self.shape[self.spec.fields.index(field_name)]

    def __str__(self) -> str:
        return f"{self.name}{self.shape}"


def computes(w: Workload, form: str = "abs") -> list[Any]:
    """The compute definition (tensors) of kernel ``w``; ``form``: an inner loop of the
    kinds that have them (see :data:`~adderize.tvm_schedules.compute.FORMS`)."""
    kwargs: dict[str, Any] = {"lp": True} if w.lp else {}
    if form != "abs":
        if form not in w.spec.forms:
            raise AdderizeError(
                f"kernel {w.kind} has no {form!r} form; its forms: {('abs', *w.spec.forms)}"
            )
        kwargs["form"] = form
    return w.spec.compute(*w.shape, **kwargs)


def candidates(w: Workload, lanes: int | None = None) -> list[Variant]:
    """Register tiles for kernel ``w``, best guess first (:func:`cpu.fitted_tiles`, or the
    kind's own list); ``lanes`` (default: this CPU's) sets the register file they fit."""
    lanes = lanes or cpu.vector_lanes()
    spec = w.spec
    if spec.own_candidates is not None:
        return spec.own_candidates(w, lanes)
    if spec.layout is None or spec.hand is None:
        raise AdderizeError(f"kernel kind {w.kind!r} has a fixed schedule, no candidates")
    terms = None
    if spec.forms and not w.lp:  # a p = 1 dense forward: its terms per output
        terms = w["c"] // w["groups"] * w["kh"] * w["kw"]
    return cpu.register_candidates(spec.layout(w.shape), spec.hand, lanes, terms)


def schedule(w: Workload, variant: Variant | None = None) -> Any:
    """The scheduled IRModule of kernel ``w``: ``variant`` (default: the first of
    :func:`candidates`), or the kind's fixed schedule."""
    spec = w.spec
    if spec.fixed is not None:
        return spec.fixed(w, computes(w))
    variant = variant or candidates(w)[0]
    if spec.own_schedule is not None:
        return spec.own_schedule(w, variant)
    assert spec.layout is not None
    lay = spec.layout(w.shape)
    return cpu.register_tile(computes(w, variant.form), lay.n_reduce, lay.row_axis, variant)


# ------------------------------------------------------------------------ the kinds
CONV = ("n", "c", "hp", "wp", "t", "kh", "kw", "stride", "dil", "groups")
DW_NCHW = ("n", "c", "h", "w", "kh", "kw", "stride", "dil", "pt", "pb", "pl", "pr")
ROWS = ("m", "t", "k")
DENSE_HAND = HandTile(wide=(7, 8, 6, 5, 4), narrow=(14, 12, 8, 7, 6))


def _rows_layout(grad: bool) -> Callable[[tuple[int, ...]], TileLayout]:
    def lay(shape: tuple[int, ...]) -> TileLayout:
        m, t, k = shape
        return TileLayout(1, 0, m, cpu.tile(k if grad else t)[1], False, grad)

    return lay


def _dense_layout(shape: tuple[int, ...]) -> TileLayout:
    _, _, _, wp, t, _, kw, stride, dil, g = shape
    return TileLayout(3, 2, out_size(wp, kw, stride, dil), t // g, True, False)


def _conv_grad_layout(shape: tuple[int, ...]) -> TileLayout:
    _, c, _, wp, *_, g = shape
    return TileLayout(3, 2, wp, c // g, True, True)


def _dw_layout(shape: tuple[int, ...]) -> TileLayout:
    _, c, _, wp, _, kw, stride, dil = shape
    return TileLayout(2, 2, out_size(wp, kw, stride, dil), c, False, False)


def _dw_grad_layout(shape: tuple[int, ...]) -> TileLayout:
    _, c, _, wp, *_ = shape
    return TileLayout(2, 2, wp, c, False, True)


def _dw_nchw_layout(shape: tuple[int, ...]) -> TileLayout:
    _, _, h, w, kh, kw, stride, dil, pt, pb, pl, pr = shape
    oh = out_size(h + pt + pb, kh, stride, dil)
    return TileLayout(2, 2, oh, out_size(w + pl + pr, kw, stride, dil), False, False)


def _dw_grad_nchw_layout(shape: tuple[int, ...]) -> TileLayout:
    _, _, h, w, *_ = shape
    return TileLayout(2, 2, h, w, False, True)


def _pointwise_layout(shape: tuple[int, ...]) -> TileLayout:  # batch 1: columns in parallel
    n, _, m, t = shape
    return TileLayout(1, 1, t, m, n == 1, False)


def _pointwise_grad_layout(shape: tuple[int, ...]) -> TileLayout:
    _, c, m, _ = shape
    return TileLayout(1, 1, c, m, True, True)


def _dw_nchw_candidates(w: Workload, lanes: int) -> list[Variant]:
    lay = _dw_nchw_layout(w.shape)
    return cpu.depthwise_plane_tiles(lay, lanes, w["c"], w["kh"], w["kw"], cpu.fma_form(w.lp))


def _dw_nchw_schedule(w: Workload, variant: Variant) -> Any:
    if variant.form in cpu.CHANNEL_FORMS:
        return cpu.channel_tile(computes(w, variant.form), variant.rows)
    lay = _dw_nchw_layout(w.shape)
    return cpu.register_tile(computes(w), lay.n_reduce, lay.row_axis, variant)


def _pointwise_candidates(w: Workload, lanes: int) -> list[Variant]:
    return cpu.pointwise_tiles(_pointwise_layout(w.shape), lanes, w["n"], cpu.fma_form())


def _int8_candidates(w: Workload, lanes: int) -> list[Variant]:  # the CPU's own SAD width
    return cpu.int8_tiles(w.shape)


def _int8_schedule(w: Workload, variant: Variant) -> Any:
    return cpu.int8_schedule(computes(w), variant, w["group"])


def _binary_schedule(w: Workload, tensors: list[Any]) -> Any:
    ow = out_size(w["wp"], w["kw"], w["stride"], w["dil"])
    rows = next((r for r in (8, 7, 6, 5, 4) if ow % r == 0), min(8, ow))
    return cpu.register_tile(tensors, 3, 2, Variant(rows, cpu.tile(w["t"])[0], False))


def _conv(nchw_out: bool = False, mac: bool = False) -> Callable[..., list[Any]]:
    def compute(*shape: int, **kwargs: Any) -> list[Any]:
        return dense.conv_forward_compute(*shape, nchw_out=nchw_out, mac=mac, **kwargs)

    return compute


for _kind in (
    Kind("forward", ROWS, dense.l1_forward_compute, layout=_rows_layout(False),
         hand=HandTile(wide=(6,), narrow=(12,), divide=False)),
    Kind("grad_a", ROWS, dense.l1_grad_a_compute, layout=_rows_layout(True),
         hand=HandTile(wide=(4,), narrow=(8,), divide=False)),
    Kind("conv_forward", CONV, _conv(), lp=True, forms=FORMS[1:], layout=_dense_layout,
         hand=DENSE_HAND),
    Kind("conv_forward_nchw", CONV, _conv(nchw_out=True), lp=True, forms=FORMS[1:],
         layout=_dense_layout, hand=DENSE_HAND),
    Kind("conv_mac_forward", CONV, _conv(mac=True), layout=_dense_layout, hand=DENSE_HAND,
         family="conv"),
    Kind("conv_grad_input", (*CONV[:7], "dil", "groups"), dense.conv_grad_input_compute,
         lp=True, layout=_conv_grad_layout,
         hand=HandTile(wide=(4, 5, 3, 6), narrow=(8, 7, 6, 5, 4))),
    Kind("depthwise_forward", ("n", "c", "hp", "wp", "kh", "kw", "stride", "dil"),
         depthwise.depthwise_forward_compute, lp=True, layout=_dw_layout,
         hand=HandTile(wide=(8, 7, 6, 5, 4), narrow=(8, 7, 6, 5, 4))),
    Kind("depthwise_forward_nchw", DW_NCHW, depthwise.depthwise_forward_nchw_compute,
         lp=True, forms=cpu.CHANNEL_FORMS, layout=_dw_nchw_layout,
         own_candidates=_dw_nchw_candidates,
         own_schedule=_dw_nchw_schedule),
    Kind("depthwise_grad_input", ("n", "c", "hp", "wp", "kh", "kw", "dil"),
         depthwise.depthwise_grad_input_compute, lp=True, layout=_dw_grad_layout,
         hand=HandTile(wide=(4, 5, 6, 7, 3), narrow=(4, 5, 6, 7, 3))),
    Kind("depthwise_grad_input_nchw", DW_NCHW[:6] + DW_NCHW[7:],
         depthwise.depthwise_grad_input_nchw_compute, lp=True, layout=_dw_grad_nchw_layout,
         own_candidates=lambda w, lanes: cpu.plane_tiles(_dw_grad_nchw_layout(w.shape), lanes)),
    Kind("pointwise_forward_nchw", ("n", "c", "m", "t"), dense.pointwise_forward_nchw_compute,
         forms=("fma",), layout=_pointwise_layout, own_candidates=_pointwise_candidates),
    Kind("pointwise_grad_input_nchw", ("n", "c", "m", "t"),
         dense.pointwise_grad_input_nchw_compute, layout=_pointwise_grad_layout,
         hand=HandTile(wide=(4,), narrow=(8,), divide=False)),
    Kind("int8_conv_forward", ("n", "hp", "wp", "c", "t", "kh", "kw", "stride", "dil", "group"),
         lowbit.int8_conv_forward_compute, own_candidates=_int8_candidates,
         own_schedule=_int8_schedule, family="int8 adder"),
    Kind("binary_conv_forward", ("n", "hp", "wp", "words", "t", "kh", "kw", "stride", "dil"),
         lowbit.binary_conv_forward_compute, fixed=_binary_schedule, family="binary"),
    Kind("transpose", ("g", "t", "r"), layout.transpose_compute,
         fixed=lambda w, tensors: fixed.transpose_schedule(tensors), tuned=False),
    Kind("one_position_forward", ("t", "c"), dense.one_position_forward_compute,
         fixed=lambda w, tensors: fixed.one_position_schedule(False, tensors), tuned=False),
    Kind("one_position_backward", ("t", "c"), dense.one_position_backward_compute,
         fixed=lambda w, tensors: fixed.one_position_schedule(True, tensors), tuned=False),
):  # fmt: skip
    register_kind(_kind)
