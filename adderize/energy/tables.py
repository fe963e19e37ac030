"""Energy tables: picojoules per operation and per bit moved, each number with its source.

The default, :data:`HOROWITZ_45NM`, is the 45 nm table of M. Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014 (as tabulated in Han et al., "Learning
both Weights and Connections for Efficient Neural Networks", NeurIPS 2015, Fig. 1), with
the shift energies ShiftAddNet uses (You et al., NeurIPS 2020, Table 1) and two derived
entries (XNOR, popcount) that say so. Users can pass their own table as YAML
(:meth:`EnergyTable.load`), in the same shape as :meth:`EnergyTable.to_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adderize._config import from_data
from adderize._errors import AdderizeError
from adderize._yaml import read_yaml

__all__ = ["COMPUTE_OPS", "HOROWITZ_45NM", "PRECISIONS", "EnergyTable", "resolve_precision"]

#: Number formats the counters know, and their width in bits.
PRECISIONS: Mapping[str, int] = MappingProxyType({"fp32": 32, "fp16": 16, "int32": 32, "int8": 8})
_BITS_TO_PRECISION = {32: "fp32", 16: "fp16", 8: "int8"}
#: Operation kinds a table prices. "compare" (ReLU, max-pool) is priced as an add.
COMPUTE_OPS = ("mult", "add", "shift", "xnor", "popcount")
MEMORY_LEVELS = ("sram", "dram")
DATA_KINDS = ("weights", "activations")


def resolve_precision(bits: int | str) -> str:
    """``32 -> 'fp32'``, ``16 -> 'fp16'``, ``8 -> 'int8'``; precision names pass through."""
    if isinstance(bits, str) and bits in PRECISIONS:
        return bits
    if isinstance(bits, int) and not isinstance(bits, bool) and bits in _BITS_TO_PRECISION:
        return _BITS_TO_PRECISION[bits]
    raise AdderizeError(
        f"bits must be one of {sorted(_BITS_TO_PRECISION)} or a precision name "
        f"{sorted(PRECISIONS)}, got {bits!r}"
    )


def _freeze(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: _freeze(v) if isinstance(v, Mapping) else v for k, v in d.items()})


@dataclass(frozen=True)
class EnergyTable:
    """Energy per operation (pJ, by op and precision) and per bit moved (pJ, by level).

    Attributes:
        name: shown in reports.
        compute_pj: ``{op: {precision: pJ}}`` for ops in :data:`COMPUTE_OPS`.
        memory_pj_per_bit: ``{"sram": pJ, "dram": pJ}`` per bit read or written.
        placement: where weights and activations live: ``{"weights": "dram",
            "activations": "sram"}`` by default (weights streamed from DRAM once per
            inference, activations kept in an on-chip buffer).
        sources: citation of each entry, by key (``"add.fp32"``, ``"memory.dram"``, ...).
    """

    name: str
    compute_pj: Mapping[str, Mapping[str, float]]
    memory_pj_per_bit: Mapping[str, float]
    placement: Mapping[str, str] = field(
        default_factory=lambda: {"weights": "dram", "activations": "sram"}
    )
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for op, per_precision in self.compute_pj.items():
            if op not in COMPUTE_OPS:
                raise AdderizeError(f"unknown op {op!r} in energy table; valid ops: {COMPUTE_OPS}")
            for precision, value in per_precision.items():
                if precision not in PRECISIONS:
                    raise AdderizeError(
                        f"unknown precision {precision!r} for {op!r}; valid: {sorted(PRECISIONS)}"
                    )
                _check_energy(f"{op}.{precision}", value)
        for level, value in self.memory_pj_per_bit.items():
            if level not in MEMORY_LEVELS:
                raise AdderizeError(f"unknown memory level {level!r}; valid: {MEMORY_LEVELS}")
            _check_energy(f"memory.{level}", value)
        for kind in DATA_KINDS:
            level = self.placement.get(kind)
            if level not in self.memory_pj_per_bit:
                raise AdderizeError(
                    f"placement of {kind!r} must name a memory level of the table "
                    f"{sorted(self.memory_pj_per_bit)}, got {level!r}"
                )
        for attr in ("compute_pj", "memory_pj_per_bit", "placement", "sources"):
            object.__setattr__(self, attr, _freeze(getattr(self, attr)))

    def op_pj(self, op: str, precision: str) -> float:
        """Energy of one ``op`` at ``precision``; ValueError naming what the table has."""
        try:
            return float(self.compute_pj[op][precision])
        except KeyError:
            have = {k: sorted(v) for k, v in self.compute_pj.items()}
            raise AdderizeError(
                f"energy table {self.name!r} has no entry for {op!r} at {precision!r} "
                f"(entries: {have})"
            ) from None

    def bit_pj(self, kind: str) -> float:
        """Energy of moving one bit of ``kind`` ('weights' or 'activations')."""
        return float(self.memory_pj_per_bit[self.placement[kind]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "compute_pj": {k: dict(v) for k, v in self.compute_pj.items()},
            "memory_pj_per_bit": dict(self.memory_pj_per_bit),
            "placement": dict(self.placement),
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "energy table") -> EnergyTable:
        return from_data(cls, data, source)

    @classmethod
    def load(cls, path: str | Path) -> EnergyTable:
        return cls.from_dict(read_yaml(path, "energy table file") or {}, str(path))


def _check_energy(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdderizeError(f"energy {key} must be a finite number of pJ, got {value!r}")
    if value < 0:
        raise AdderizeError(f"energy {key} must be >= 0 pJ, got {value}")


_HOROWITZ = "Horowitz, ISSCC 2014, 45 nm (table in Han et al., NeurIPS 2015, Fig. 1)"
_SHIFTADD = "ShiftAddNet (You et al., NeurIPS 2020), Table 1, 45 nm; quoted, not re-derived"
_DERIVED_1BIT = (
    "derived: a 1-bit cell, taken as 1/32 of a 32-bit integer add (0.1 pJ / 32); no measured source"
)
_DERIVED_FPSHIFT = (
    "derived: scaling a float by 2^k adds k to its exponent, priced as an int8 add (0.03 pJ)"
)

#: The default table. Compute in pJ per operation; memory in pJ per bit.
HOROWITZ_45NM = EnergyTable(
    name="horowitz-45nm",
    compute_pj={
        "mult": {"fp32": 3.7, "fp16": 1.1, "int32": 3.1, "int8": 0.2},
        "add": {"fp32": 0.9, "fp16": 0.4, "int32": 0.1, "int8": 0.03},
        "shift": {"int32": 0.13, "int8": 0.024, "fp32": 0.03, "fp16": 0.03},
        "xnor": dict.fromkeys(PRECISIONS, 0.1 / 32),
        "popcount": dict.fromkeys(PRECISIONS, 0.1 / 32),
    },
    memory_pj_per_bit={"sram": 5.0 / 32, "dram": 640.0 / 32},
    placement={"weights": "dram", "activations": "sram"},
    sources={
        **{f"{op}.{p}": _HOROWITZ for op in ("mult", "add") for p in PRECISIONS},
        "shift.int32": _SHIFTADD,
        "shift.int8": _SHIFTADD,
        "shift.fp32": _DERIVED_FPSHIFT,
        "shift.fp16": _DERIVED_FPSHIFT,
        "xnor": _DERIVED_1BIT,
        "popcount": _DERIVED_1BIT,
        "memory.sram": "Horowitz 2014: 32-bit read of an 8 KB SRAM, 5 pJ",
        "memory.dram": "Horowitz 2014: 32-bit DRAM access, 640 pJ",
    },
)
