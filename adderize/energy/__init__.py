"""Operation counts and energy of any (converted) model, from cited energy tables."""

from adderize.energy.cost import CostTable
from adderize.energy.count import OpCount, count_ops
from adderize.energy.report import EnergyReport, LayerEnergy, cost_table, energy_report
from adderize.energy.tables import HOROWITZ_45NM, PRECISIONS, EnergyTable, resolve_precision

__all__ = [
    "HOROWITZ_45NM",
    "PRECISIONS",
    "CostTable",
    "EnergyReport",
    "EnergyTable",
    "LayerEnergy",
    "OpCount",
    "cost_table",
    "count_ops",
    "energy_report",
    "resolve_precision",
]
