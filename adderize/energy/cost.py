"""From counts to energy: one function prices a node; the search's cost table reuses it.

Memory (a documented, deliberately simple hierarchy, charged alike to every node type):
every node reads its input activations and writes its output once; conv / linear-like
layers also read their weights once. Each bit moved costs the energy of the level the table
places it in (default: weights in DRAM, activations in an on-chip SRAM buffer). No
operator fusion is assumed. Weight widths: conv and adder layers use the layer precision;
binary layers 1 bit (+ a 32-bit scale per output channel); shift layers 5 bits (sign and a
4-bit exponent in [-14, 0]). Activations use the layer precision for every op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adderize._errors import AdderizeError
from adderize.energy.count import OpCount
from adderize.energy.tables import PRECISIONS, EnergyTable
from adderize.passes.registry import priced_op, priced_op_names

__all__ = [
    "CostTable",
    "bits_moved",
    "compute_breakdown",
    "layer_counts",
    "node_energy",
]


def layer_counts(c: OpCount, op: str | None = None) -> dict[str, int]:
    """Operation counts of node ``c``; conv/linear layers as ``op`` (default: its own)."""
    if not c.parametric:
        return dict(c.counts)
    spec = priced_op(op or c.op)
    assert spec.counts is not None
    counts = dict(spec.counts(c.macs, c.out_numel))
    if c.bias:
        counts["add"] = counts.get("add", 0) + c.out_numel
    return counts


def _weight_bits(c: OpCount, op: str, precision: str) -> int:
    spec = priced_op(op)
    per_weight = PRECISIONS[precision] if spec.weight_bits is None else spec.weight_bits
    return per_weight * c.weight_numel + spec.channel_bits * c.out_channels


def compute_breakdown(
    c: OpCount, table: EnergyTable, precision: str, op: str | None = None
) -> dict[str, float]:
    """Compute energy (pJ) of node ``c`` by op kind; compares are priced as adds."""
    out: dict[str, float] = {}
    for kind, n in layer_counts(c, op).items():
        if n:
            priced = "add" if kind == "compare" else kind
            out[priced] = out.get(priced, 0.0) + n * table.op_pj(priced, precision)
    return out


def bits_moved(c: OpCount, precision: str, op: str | None = None) -> tuple[int, int]:
    """``(weight_bits, activation_bits)`` node ``c`` moves (conv/linear priced as ``op``)."""
    act = PRECISIONS[precision] * (c.in_numel + c.out_numel)
    return (_weight_bits(c, op or c.op, precision) if c.parametric else 0), act


def node_energy(
    c: OpCount, table: EnergyTable, precision: str, op: str | None = None
) -> tuple[float, float]:
    """``(compute_pj, memory_pj)`` of node ``c`` (conv/linear priced as ``op``)."""
    op = op or c.op
    compute = sum(compute_breakdown(c, table, precision, op).values())
    weight_bits, act_bits = bits_moved(c, precision, op)
    memory = act_bits * table.bit_pj("activations") + weight_bits * table.bit_pj("weights")
    return compute, memory


@dataclass(frozen=True)
class CostTable:
    """Energy of every conv / linear layer under every op, precomputed for the search.

    ``costs[i, j]`` is the energy (pJ, compute + memory) of layer ``layers[i]`` as
    ``ops[j]``; ``fixed_pj`` is everything else (norms, activations, pooling, ...). The
    energy of an assignment is ``fixed_pj + sum_i costs[i, a_i]``: no model rebuild.
    """

    layers: tuple[str, ...]
    ops: tuple[str, ...]
    costs: np.ndarray
    fixed_pj: float

    @classmethod
    def from_counts(
        cls,
        counts: Sequence[OpCount],
        table: EnergyTable,
        precision: str,
        ops: Sequence[str] | None = None,
    ) -> CostTable:
        ops = priced_op_names() if ops is None else tuple(ops)
        for op in ops:
            priced_op(op)  # an op without a cost model is refused by name, up front
        rows: dict[str, list[float]] = {}
        fixed = 0.0
        for c in counts:
            if c.parametric:
                row = [sum(node_energy(c, table, precision, op)) for op in ops]
                prev = rows.get(c.name)
                rows[c.name] = (
                    row if prev is None else [a + b for a, b in zip(prev, row, strict=True)]
                )
            else:
                fixed += sum(node_energy(c, table, precision))
        return cls(
            tuple(rows), tuple(ops), np.asarray(list(rows.values()), dtype=np.float64), fixed
        )

    def index(self, assignment: Mapping[str, str]) -> np.ndarray:
        """Op indices of an assignment ``{layer: op}`` (layers not named: 'conv')."""
        unknown = set(assignment) - set(self.layers)
        if unknown:
            raise AdderizeError(f"layers not in the cost table: {sorted(unknown)[:5]}")
        bad = {op for op in assignment.values() if op not in self.ops}
        if bad:
            raise AdderizeError(f"unknown op(s) {sorted(bad)}; valid: {self.ops}")
        pos = {op: j for j, op in enumerate(self.ops)}
        return np.array([pos[assignment.get(n, "conv")] for n in self.layers], dtype=np.intp)

    def energy(self, choice: Mapping[str, str] | np.ndarray | Sequence[int]) -> float:
        """Total pJ of an assignment: ``{layer: op}``, or one op index per layer."""
        idx = self.index(choice) if isinstance(choice, Mapping) else np.asarray(choice)
        return self.fixed_pj + float(self.costs[np.arange(len(self.layers)), idx].sum())
