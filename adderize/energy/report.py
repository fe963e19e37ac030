"""``energy_report``: per-layer op counts and energy of a (converted) model, vs all-conv."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from adderize._errors import AdderizeError
from adderize.energy.cost import (
    CostTable,
    bits_moved,
    compute_breakdown,
    layer_counts,
    node_energy,
)
from adderize.energy.count import OpCount, count_ops
from adderize.energy.tables import HOROWITZ_45NM, EnergyTable, resolve_precision
from adderize.passes.registry import conventions

__all__ = ["EnergyReport", "LayerEnergy", "cost_table", "energy_report"]


@dataclass(frozen=True)
class LayerEnergy:
    """One node: its counts and energy as it is, and as a conv (``baseline_*``)."""

    name: str
    type: str
    kind: str
    op: str
    precision: str
    macs: int
    counts: dict[str, int]
    compute_pj: float
    memory_pj: float
    baseline_compute_pj: float
    baseline_memory_pj: float
    compute_by_op: dict[str, float]
    baseline_compute_by_op: dict[str, float]
    weight_bytes: float
    activation_bytes: float
    baseline_counts: dict[str, int] = field(default_factory=dict)

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj


@dataclass
class EnergyReport:
    """Per-node energy of a model and its all-conv baseline. Energies in pJ."""

    layers: list[LayerEnergy]
    input_size: tuple[int, ...]
    table: str
    counting: str
    conventions: str = field(default_factory=conventions)  # the registered ops' (OpSpec)
    notes: list[str] = field(default_factory=list)

    def _sum(self, attr: str, parametric_only: bool = False) -> float:
        return sum(
            getattr(x, attr)
            for x in self.layers
            if not parametric_only or x.kind in ("conv2d", "linear")
        )

    @property
    def compute_pj(self) -> float:
        return self._sum("compute_pj")

    @property
    def memory_pj(self) -> float:
        return self._sum("memory_pj")

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    @property
    def baseline_compute_pj(self) -> float:
        return self._sum("baseline_compute_pj")

    @property
    def baseline_total_pj(self) -> float:
        return self.baseline_compute_pj + self._sum("baseline_memory_pj")

    def op_totals(self, parametric_only: bool = False, baseline: bool = False) -> dict[str, int]:
        """Total op counts (e.g. ``{'mult': ..., 'add': ...}``), of conv/linear layers only if
        ``parametric_only``; ``baseline`` counts them as convs."""
        total: Counter[str] = Counter()
        for x in self.layers:
            if parametric_only and x.kind not in ("conv2d", "linear"):
                continue
            total.update(x.baseline_counts if baseline else x.counts)
        return dict(total)

    @property
    def macs(self) -> int:
        return sum(x.macs for x in self.layers)

    def summary(self) -> str:
        ops = self.op_totals(parametric_only=True)
        base = self.op_totals(parametric_only=True, baseline=True)

        def g(n: float) -> str:
            return f"{n / 1e9:.3g} G"

        def uj(pj: float) -> str:
            return f"{pj / 1e6:.4g} uJ"

        lines = [
            f"input {self.input_size}, table {self.table}, counting by {self.counting}",
            f"conv/linear layers: {g(self.macs)}MACs; as converted: "
            + ", ".join(f"{k} {g(v)}" for k, v in sorted(ops.items()))
            + "; as all-conv: "
            + ", ".join(f"{k} {g(v)}" for k, v in sorted(base.items())),
            f"energy: compute {uj(self.compute_pj)} (all-conv {uj(self.baseline_compute_pj)}, "
            f"ratio {self.compute_pj / max(self.baseline_compute_pj, 1e-30):.3f}); "
            f"memory {uj(self.memory_pj)}; total {uj(self.total_pj)} (all-conv "
            f"{uj(self.baseline_total_pj)}, ratio "
            f"{self.total_pj / max(self.baseline_total_pj, 1e-30):.3f})",
            f"moved: weights {self._sum('weight_bytes') / 2**20:.4g} MiB, activations "
            f"{self._sum('activation_bytes') / 2**20:.4g} MiB (each node's input and output)",
            f"counting: {self.conventions}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def table_str(self, max_rows: int | None = None) -> str:
        header = ("layer", "type", "op", "MACs", "compute uJ", "memory uJ", "as conv uJ")
        rows = [
            (
                x.name,
                x.type,
                x.op or x.kind,
                f"{x.macs / 1e6:.2f}M" if x.macs else "-",
                f"{x.compute_pj / 1e6:.4f}",
                f"{x.memory_pj / 1e6:.4f}",
                f"{(x.baseline_compute_pj + x.baseline_memory_pj) / 1e6:.4f}",
            )
            for x in self.layers
        ]
        if max_rows is not None and len(rows) > max_rows:
            rows = [*rows[:max_rows], ("...", "", "", "", "", "", "")]
        widths = [min(max(len(r[i]) for r in [header, *rows]), 40) for i in range(7)]
        fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
        return "\n".join(fmt.format(*(c[:40] for c in r)) for r in [header, *rows])

    def __str__(self) -> str:
        return f"{self.table_str()}\n\n{self.summary()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "table": self.table,
            "counting": self.counting,
            "conventions": self.conventions,
            "notes": self.notes,
            "totals": {
                "macs": self.macs,
                "weight_bytes": self._sum("weight_bytes"),
                "activation_bytes": self._sum("activation_bytes"),
                "compute_pj": self.compute_pj,
                "memory_pj": self.memory_pj,
                "total_pj": self.total_pj,
                "baseline_compute_pj": self.baseline_compute_pj,
                "baseline_total_pj": self.baseline_total_pj,
                "ops": self.op_totals(),
                "conv_linear_ops": self.op_totals(parametric_only=True),
                "conv_linear_ops_as_conv": self.op_totals(parametric_only=True, baseline=True),
            },
            "layers": [asdict(x) for x in self.layers],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def plot(self, path: str | Path) -> Path:
        """Per-layer energy stacked by op type, all-conv vs converted (matplotlib PNG)."""
        from adderize.energy.plot import plot_report

        return plot_report(self, Path(path))


def _precision_for(bits: int | str | Mapping[str, int | str]) -> Any:
    if isinstance(bits, Mapping):
        per_layer = {k: resolve_precision(v) for k, v in bits.items()}
        default = per_layer.pop("default", "fp32")
        return lambda name: per_layer.get(name, default)
    p = resolve_precision(bits)
    return lambda name: p


def _counts(model: nn.Module, input_size: tuple[int, ...]) -> tuple[list[OpCount], str]:
    counts, how = count_ops(model, input_size)
    if not any(c.parametric for c in counts):
        raise AdderizeError(f"{type(model).__name__} has no conv / linear layer to count")
    return counts, how


def energy_report(
    model: nn.Module,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
    table: EnergyTable | str | Path | None = None,
    bits: int | str | Mapping[str, int | str] = 32,
) -> EnergyReport:
    """Op counts and energy of every node of ``model``, and of the same model all-conv.

    Args:
        model: any model, converted or not (each layer is priced as the op it computes).
        input_size: ``(N, C, H, W)``.
        table: an :class:`EnergyTable`, a YAML file of one, or None for
            :data:`~adderize.energy.tables.HOROWITZ_45NM`.
        bits: 32 (fp32), 16 (fp16), 8 (int8), a precision name, or ``{layer: bits,
            "default": bits}`` for per-layer precision.
    """
    table = _table(table)
    precision_of = _precision_for(bits)
    counts, how = _counts(model, input_size)
    layers = []
    for c in counts:
        precision = precision_of(c.name)
        compute, memory = node_energy(c, table, precision)
        base_c, base_m = (
            node_energy(c, table, precision, "conv") if c.parametric else (compute, memory)
        )
        by_op = compute_breakdown(c, table, precision)
        base_by_op = compute_breakdown(c, table, precision, "conv") if c.parametric else by_op
        weight_bits, act_bits = bits_moved(c, precision)
        layers.append(
            LayerEnergy(
                c.name,
                c.type,
                c.kind,
                c.op,
                precision,
                c.macs,
                layer_counts(c),
                compute,
                memory,
                base_c,
                base_m,
                by_op,
                base_by_op,
                weight_bits / 8,
                act_bits / 8,
                layer_counts(c, "conv"),
            )
        )
    notes = []
    if how == "hooks":
        notes.append(
            "torch.fx could not trace the model: counted with module hooks, "
            "functional ops (residual adds, ...) are not included"
        )
    other = sorted({x.type for x in layers if x.kind == "other"})
    if other:
        notes.append(f"no op-count rule for {other}: memory traffic only")
    return EnergyReport(layers, tuple(input_size), table.name, how, notes=notes)


def cost_table(
    model: nn.Module,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
    table: EnergyTable | str | Path | None = None,
    bits: int | str = 32,
    ops: tuple[str, ...] = ("conv", "adder", "binary", "shift"),
) -> CostTable:
    """Per-layer, per-op energy table of ``model`` for cheap assignment sums (the search)."""
    counts, _ = _counts(model, input_size)
    return CostTable.from_counts(counts, _table(table), resolve_precision(bits), ops)


def _table(table: EnergyTable | str | Path | None) -> EnergyTable:
    if table is None:
        return HOROWITZ_45NM
    if isinstance(table, EnergyTable):
        return table
    return EnergyTable.load(table)
