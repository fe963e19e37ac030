"""The operator search space of a model: one categorical per convertible layer, an energy
budget checked from the precomputed cost table (a sum, no model rebuild)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from adderize._config import from_data
from adderize._errors import AdderizeError
from adderize.energy.cost import CostTable
from adderize.passes.mapping import OpMapping

__all__ = [
    "DEFAULT_OPS",
    "OpSpace",
    "OpSpaceFile",
    "energy_budget",
]

DEFAULT_OPS = ("conv", "adder", "binary", "shift")


@dataclass
class OpSpaceFile:
    """The JSON form of an :class:`OpSpace` (what multi-trial search trials read)."""

    VERSION: ClassVar[int] = 1

    layers: list[str]
    ops: list[str]
    budget_pj: float
    fixed: list[str]
    table_layers: list[str]
    table_ops: list[str]
    costs: list[list[float]]
    fixed_pj: float


@dataclass
class OpSpace:
    """Layers to choose ops for, the per-layer per-op energy, and the budget (pJ).

    ``fixed`` holds the layers kept as they are (first / last unless asked otherwise).
    """

    layers: tuple[str, ...]
    ops: tuple[str, ...]
    costs: CostTable
    budget_pj: float
    fixed: tuple[str, ...] = ()

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        input_size: tuple[int, ...],
        budget: float,
        ops: Sequence[str] = DEFAULT_OPS,
        search_first_last: bool = False,
        bits: int | str = 32,
    ) -> OpSpace:
        """The space of ``model`` (a float model). ``budget`` <= 1 is a fraction of the
        all-conv energy, above 1 an absolute energy in pJ."""
        from adderize.energy.report import cost_table
        from adderize.passes.convert import adderize
        from adderize.passes.registry import priced_op, priced_op_names

        if not ops:
            raise AdderizeError(f"no ops to search; priced ops: {', '.join(priced_op_names())}")
        for op in ops:
            priced_op(op)  # registered, with a cost model: refused by name here, not later
        if budget <= 0:
            raise AdderizeError(f"budget must be > 0 (a fraction <= 1 or pJ), got {budget}")
        mapping = OpMapping(
            default="adder",
            keep_first=not search_first_last,
            keep_last=not search_first_last,
            insert_norm=False,
        )
        _, report = adderize(model, mapping, return_report=True)
        layers = tuple(r.name for r in report.replaced)
        fixed = tuple(r.name for r in report.kept)
        if not layers:
            raise AdderizeError("the model has no layer the search can choose an op for")
        table = cost_table(model, input_size, bits=bits, ops=tuple(dict.fromkeys(("conv", *ops))))
        conv = table.energy({})
        budget_pj = budget * conv if budget <= 1 else float(budget)
        return cls(layers, tuple(ops), table, budget_pj, fixed)

    # ------------------------------------------------------------------------- energy
    def energy(self, assignment: Mapping[str, str]) -> float:
        """pJ of an assignment ``{layer: op}`` (the cost-table sum)."""
        return self.costs.energy(dict(assignment))

    def feasible(self, assignment: Mapping[str, str]) -> bool:
        return self.energy(assignment) <= self.budget_pj

    def min_energy(self) -> float:
        """pJ of the cheapest assignment (each layer's cheapest op: the energy is a sum)."""
        return self.energy(
            {n: min(self.ops, key=lambda op: self.energy({n: op})) for n in self.layers}
        )

    @property
    def conv_pj(self) -> float:
        return self.costs.energy({})

    def size(self) -> int:
        return len(self.ops) ** len(self.layers)

    def feasible_fraction(self, samples: int = 20000, seed: int = 0) -> float:
        """Fraction of uniformly drawn assignments within budget (Monte Carlo estimate)."""
        rng = np.random.default_rng(seed)
        cols = [self.costs.ops.index(op) for op in self.ops]
        rows = [self.costs.layers.index(n) for n in self.layers]
        per_layer = self.costs.costs[np.ix_(rows, cols)]  # layers x ops
        picks = rng.integers(0, len(self.ops), size=(samples, len(self.layers)))
        conv = self.costs.costs[rows, self.costs.ops.index("conv")]
        fixed = self.conv_pj - conv.sum()  # everything not searched, as CostTable prices it
        totals = fixed + per_layer[np.arange(len(self.layers)), picks].sum(1)
        return float((totals <= self.budget_pj).mean())

    def random(self, rng: np.random.Generator) -> dict[str, str]:
        return {n: self.ops[int(rng.integers(len(self.ops)))] for n in self.layers}

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> str:
        c = self.costs
        data = OpSpaceFile(
            list(self.layers),
            list(self.ops),
            self.budget_pj,
            list(self.fixed),
            list(c.layers),
            list(c.ops),
            c.costs.tolist(),
            c.fixed_pj,
        )
        return json.dumps({"version": OpSpaceFile.VERSION, **asdict(data)})

    @classmethod
    def from_json(cls, text: str, source: str = "space.json") -> OpSpace:
        d = from_data(OpSpaceFile, json.loads(text), source, version=OpSpaceFile.VERSION)
        costs = np.asarray(d.costs, dtype=np.float64)
        if costs.shape != (len(d.table_layers), len(d.table_ops)):
            raise AdderizeError(
                f"{source}: costs are {costs.shape}, not table layers x ops "
                f"({len(d.table_layers)}, {len(d.table_ops)})"
            )
        table = CostTable(tuple(d.table_layers), tuple(d.table_ops), costs, d.fixed_pj)
        return cls(tuple(d.layers), tuple(d.ops), table, d.budget_pj, tuple(d.fixed))

    # --------------------------------------------------------------------------- NNI
    def to_nni(self) -> Any:
        """The space in NNI's mutable API: a ``MutableDict`` of one ``Categorical`` per
        layer plus an :class:`EnergyBudget` constraint (``space.contains(sample)``)."""
        from nni.mutable import Categorical, MutableDict

        choices = {n: Categorical(list(self.ops), label=n) for n in self.layers}
        return MutableDict({**choices, "__energy_budget__": energy_budget(self, choices)})

    def hpo_search_space(self) -> dict[str, Any]:
        """The same choices as an NNI HPO search space (for NNI's tuners)."""
        return {n: {"_type": "choice", "_value": list(self.ops)} for n in self.layers}

    def mapping(self, assignment: Mapping[str, str]) -> OpMapping:
        """An OpMapping that reproduces ``assignment`` exactly (every other layer kept)."""
        unknown = set(assignment) - set(self.layers)
        if unknown:
            raise AdderizeError(f"layers not in the space: {sorted(unknown)[:5]}")
        return OpMapping(default="conv", names=dict(assignment), insert_norm=False)

    def build(self, model: nn.Module, assignment: Mapping[str, str]) -> nn.Module:
        from adderize.passes.convert import adderize

        return adderize(model, self.mapping(assignment), strict=True)


def energy_budget(
    space: OpSpace, choices: dict[str, Any], cap: Callable[[], float] | None = None
) -> Any:
    """An NNI ``Constraint`` over ``choices`` (``{layer: categorical}``): a sample is valid
    when its cost-table energy is within ``space``'s budget, or within ``cap()`` pJ when
    given (read at every check: a search may tighten it)."""
    from nni.mutable import Constraint, SampleValidationError

    class EnergyBudget(Constraint):
        """NNI constraint: a sample is valid when its energy is within the budget."""

        def __init__(self) -> None:
            self.label = "__energy_budget__"

        def leaf_mutables(self, is_leaf: Any) -> Any:
            for c in choices.values():
                yield from c.leaf_mutables(is_leaf)

        def check_contains(self, sample: dict[str, Any]) -> Any:
            energy = space.energy({n: sample[n] for n in space.layers})
            limit = space.budget_pj if cap is None else cap()
            if energy > limit:
                return SampleValidationError(f"energy {energy:.4g} pJ over budget {limit:.4g} pJ")
            return None

        def freeze(self, sample: dict[str, Any]) -> float:
            return space.energy({n: sample[n] for n in space.layers})

    return EnergyBudget()
