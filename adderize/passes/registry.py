"""What can become what: the source layers the pass understands and the ops it can build.

Two separate tables, as torch.ao separates ``BackendConfig`` from ``QConfigMapping``:

* :func:`adderize.passes.sources.classify` says what a module *is* (a 2-D conv, a linear
  layer, or a special case that cannot be converted, with the reason);
* the op registry (:func:`register_op`, :func:`get_op`) says what each op name builds from a
  ``nn.Conv2d`` / ``nn.Linear``. The user's :class:`~adderize.passes.mapping.OpMapping`
  only picks op names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from adderize._config import from_data
from adderize._errors import AdderizeError, AdderizeTypeError
from adderize.nn import (
    Adder1d,
    Adder2d,
    AdderLinear,
    BinaryConv1d,
    BinaryConv2d,
    BinaryLinear,
    Conv2dLike,
    LinearLike,
    ShiftConv1d,
    ShiftConv2d,
    ShiftLinear,
    check_exponents,
    check_p,
)
from adderize.passes.sources import Kind, Source

__all__ = [
    "AdderParams",
    "OpConfig",
    "OpSpec",
    "ShiftParams",
    "conventions",
    "get_op",
    "layers_with",
    "op_names",
    "op_of_layer",
    "priced_op",
    "priced_op_names",
    "register_op",
    "registered",
]


#: ``builder(float_module, source, **params)`` -> the new layer (``params``: the fields of
#: the op's parameter dataclass, passed only when the op has one)
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class OpSpec:
    """An op the pass can build.

    Attributes:
        name: the name used in mappings, reports and the CLI.
        conv2d: builds the replacement of an ``nn.Conv2d`` (None: keep the original).
        linear: builds the replacement of an ``nn.Linear`` (None: keep the original).
        needs_norm: insert a BatchNorm after the new layer when none follows it.
        description: one line for ``--help`` and error messages.
        conv1d: builds the replacement of an ``nn.Conv1d`` (None: such layers are skipped
            with a reason, unless the op keeps float layers anyway).
        layers: the module classes the op builds: how the energy counter, the search and
            export recognise a converted layer as this op.
        counts: the op's operation counts for ``macs`` multiply-accumulate positions and
            ``outputs`` output elements (bias excluded), e.g. ``{"add": 2 * macs}``: how
            energy reports and the search price the op. None: the op cannot be priced
            (energy reports and the search refuse it by name).
        weight_bits: bits one weight element takes (None: the layer precision's), and
        channel_bits: extra bits per output channel (a binary layer's 32-bit scale).
        params: the op's per-layer parameters, a dataclass whose fields the builders take
            as keyword arguments (None: the op has none). An
            :class:`OpConfig` carries an instance of it in an ``OpMapping``.
        convention: how ``counts`` counts one MAC, in words, for the conventions line of
            every energy report (e.g. ``"2 adds (subtract, accumulate |.|)"``).
        adaptive_lr: the op's layers take the papers' adaptive learning rate (eq. 33,
            :class:`adderize.train.AdaptiveLRScaling`).
        lp_schedule: the op's layers have a ``p`` that the l_p -> l_1 schedule moves
            (:class:`adderize.train.LpSchedule`).
    """

    name: str
    conv2d: Builder | None
    linear: Builder | None
    needs_norm: bool
    description: str
    conv1d: Builder | None = None
    layers: tuple[type, ...] = ()
    counts: Callable[[int, int], dict[str, int]] | None = None
    weight_bits: int | None = None
    channel_bits: int = 0
    params: type | None = None
    convention: str = ""
    adaptive_lr: bool = False
    lp_schedule: bool = False

    @property
    def keeps_float(self) -> bool:
        return self.conv2d is None and self.linear is None and self.conv1d is None

    def builder(self, kind: Kind | None) -> Builder | None:
        return {"conv2d": self.conv2d, "conv1d": self.conv1d, "linear": self.linear}.get(kind or "")

    def build(self, module: nn.Module, source: Source, config: OpConfig | None = None) -> nn.Module:
        builder = self.builder(source.kind)
        if builder is None:
            return module
        params = config.kwargs() if config is not None else {}
        return builder(module, source, **params)


@dataclass(frozen=True)
class OpConfig:
    """An op with its per-layer parameters: an :class:`~adderize.passes.mapping.OpMapping`
    value where a plain op name is not enough, e.g.
    ``OpConfig("shift", ShiftParams(min_exp=-8))``. ``params`` is an instance of the op's
    ``OpSpec.params`` dataclass (None: the op's defaults). In YAML it is a mapping,
    ``{op: shift, min_exp: -8}``; a plain name still reads as the op with its defaults."""

    op: str
    params: Any = None

    def __post_init__(self) -> None:
        spec = get_op(self.op)
        if self.params is None:
            return
        if spec.params is None:
            raise AdderizeError(f"op {self.op!r} takes no parameters, got {self.params!r}")
        if not isinstance(self.params, spec.params):
            raise AdderizeTypeError(
                f"op {self.op!r} takes {spec.params.__name__} parameters, got "
                f"{type(self.params).__name__}"
            )

    @classmethod
    def of(cls, value: str | OpConfig | Mapping[str, Any]) -> OpConfig:
        """An op name, an OpConfig, or a mapping ``{op: NAME, PARAM: VALUE, ...}``."""
        if isinstance(value, OpConfig):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            data = dict(value)
            op = data.pop("op", None)
            if not isinstance(op, str):
                raise AdderizeError(
                    "an op with parameters is a mapping with an 'op' key, e.g. "
                    f"{{op: shift, min_exp: -8}}; got {dict(value)!r}"
                )
            spec = get_op(op)
            if not data:
                return cls(op)
            if spec.params is None:
                raise AdderizeError(f"op {op!r} takes no parameters, got {sorted(data)}")
            return cls(op, from_data(spec.params, data, f"op {op!r} parameters"))
        raise AdderizeTypeError(
            f"an op is a name, an OpConfig or a mapping with an 'op' key, got "
            f"{type(value).__name__}"
        )

    @property
    def plain(self) -> bool:
        """Whether the op runs with its defaults (a plain name says it all)."""
        spec = get_op(self.op)
        return self.params is None or (spec.params is not None and self.params == spec.params())

    def kwargs(self) -> dict[str, Any]:
        return {} if self.params is None else asdict(self.params)

    def to_data(self) -> str | dict[str, Any]:
        """The YAML/JSON form: the op name, or ``{op: NAME, **params}``."""
        return self.op if self.plain else {"op": self.op, **self.kwargs()}

    def __str__(self) -> str:
        if self.plain:
            return self.op
        return f"{self.op}({', '.join(f'{k}={v!r}' for k, v in self.kwargs().items())})"


@dataclass(frozen=True)
class AdderParams:
    """Per-layer parameters of the ``adder`` op."""

    #: the distance's norm: 1 is AdderNet's l1; the l_p schedule starts from 2
    p: float = 1.0

    def __post_init__(self) -> None:
        check_p(self.p)


@dataclass(frozen=True)
class ShiftParams:
    """Per-layer parameters of the ``shift`` op: the power-of-two exponent range; an
    unset bound is taken from the weights converted (:func:`adderize.nn.shift.exponent_range`)."""

    min_exp: int | None = None
    max_exp: int | None = None

    def __post_init__(self) -> None:
        check_exponents(self.min_exp, self.max_exp)


_OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Add an op (e.g. a user's own layer) under ``spec.name``; names are unique."""
    if spec.name in _OPS:
        raise AdderizeError(f"op {spec.name!r} is already registered")
    _OPS[spec.name] = spec
    return spec


@contextlib.contextmanager
def registered(spec: OpSpec) -> Iterator[OpSpec]:
    """``register_op(spec)`` for the ``with`` block only (a test's or a script's own op);
    the op is removed again on exit, whatever happened inside."""
    register_op(spec)
    try:
        yield spec
    finally:
        _OPS.pop(spec.name, None)


def get_op(name: str) -> OpSpec:
    """The registered op called ``name``; ValueError naming the valid ops otherwise."""
    try:
        return _OPS[name]
    except KeyError:
        raise AdderizeError(f"unknown op {name!r}; valid ops: {', '.join(op_names())}") from None


def op_names() -> tuple[str, ...]:
    return tuple(_OPS)


def priced_op_names() -> tuple[str, ...]:
    """The ops with a cost model (``OpSpec.counts``): what energy reports can price."""
    return tuple(n for n, s in _OPS.items() if s.counts is not None)


def priced_op(name: str) -> OpSpec:
    """The registered op ``name`` with a cost model; ValueError naming the priced ops."""
    spec = get_op(name)
    if spec.counts is None:
        raise AdderizeError(
            f"op {name!r} has no cost model (OpSpec.counts), so energy reports and the "
            f"search cannot price it; priced ops: {', '.join(priced_op_names())}"
        )
    return spec


def op_of_layer(module: nn.Module) -> str | None:
    """The registered op whose layer classes ``module`` is one of (most specific first)."""
    best: tuple[int, str] | None = None
    for name, spec in _OPS.items():
        for cls in spec.layers:
            if isinstance(module, cls):
                depth = type(module).__mro__.index(cls)
                if best is None or depth < best[0]:
                    best = (depth, name)
    return None if best is None else best[1]


def conventions() -> str:
    """The counting conventions of the priced ops, one clause each (energy reports)."""
    return "; ".join(
        f"{name} MAC = {spec.convention}"
        for name, spec in _OPS.items()
        if spec.counts is not None and spec.convention
    )


def layers_with(model: nn.Module, hook: Literal["adaptive_lr", "lp_schedule"]) -> list[nn.Module]:
    """The layers of ``model`` whose op (:func:`op_of_layer`) declares the training
    ``hook`` (an ``OpSpec`` flag): how the training scheme finds the layers it acts on."""
    return [m for m in model.modules() if getattr(_OPS.get(op_of_layer(m) or ""), hook, False)]


def _conv_builder(cls: type[Conv2dLike]) -> Builder:
    """Builds ``cls`` from the float conv (2-D, or 1-D for a ``Conv1dLike`` class)."""

    def build(module: nn.Module, source: Source, **params: Any) -> nn.Module:
        if source.dynamic_same:
            params["dynamic_same"] = True
        return cls.from_float(module, **params)  # type: ignore[arg-type]

    return build


def _linear_builder(cls: type[LinearLike]) -> Builder:
    return lambda module, source, **params: cls.from_float(module, **params)  # type: ignore[arg-type]


# The counting conventions (the papers' way; stated in every energy report):
register_op(
    OpSpec(
        "conv",
        None,
        None,
        False,
        "keep the original multiply-accumulate layer",
        layers=(nn.modules.conv._ConvNd, nn.Linear),
        counts=lambda macs, outputs: {"mult": macs, "add": macs},
        convention="1 mult + 1 add",
    )
)
register_op(
    OpSpec(
        "adder",
        _conv_builder(Adder2d),
        _linear_builder(AdderLinear),
        True,
        "AdderNet l1-distance layer (Adder2d / AdderLinear / Adder1d)",
        _conv_builder(Adder1d),
        layers=(Adder2d, AdderLinear),
        # the subtraction, and the accumulation of |.| (a sign-controlled add/subtract)
        counts=lambda macs, outputs: {"add": 2 * macs},
        convention="2 adds (subtract, accumulate |.|)",
        params=AdderParams,
        adaptive_lr=True,
        lp_schedule=True,
    )
)
register_op(
    OpSpec(
        "binary",
        _conv_builder(BinaryConv2d),
        _linear_builder(BinaryLinear),
        False,
        "XNOR-Net binary activations and weights (BinaryConv2d / BinaryLinear / BinaryConv1d)",
        _conv_builder(BinaryConv1d),
        layers=(BinaryConv2d, BinaryLinear),
        # 1 XNOR + 1 popcount bit per MAC, 1 mult per output for the channel scale
        counts=lambda macs, outputs: {"xnor": macs, "popcount": macs, "mult": outputs},
        convention="1 XNOR + 1 popcount (+1 mult per output)",
        weight_bits=1,
        channel_bits=32,
    )
)
register_op(
    OpSpec(
        "shift",
        _conv_builder(ShiftConv2d),
        _linear_builder(ShiftLinear),
        False,
        "DeepShift power-of-two weights (ShiftConv2d / ShiftLinear / ShiftConv1d)",
        _conv_builder(ShiftConv1d),
        layers=(ShiftConv2d, ShiftLinear),
        counts=lambda macs, outputs: {"shift": macs, "add": macs},
        convention="1 shift + 1 add",
        weight_bits=5,  # sign and a 4-bit exponent in [-14, 0]
        params=ShiftParams,
    )
)
