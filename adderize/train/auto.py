"""``ops="auto"``: each layer's op chosen from its measured sensitivity, under an energy
budget, with no training: the seconds-to-minutes counterpart of :func:`adderize.search.search`
(which can start from it).

For each candidate op the model is converted function-preservingly
(``adderize(model, op, preserve=True)``), its shift weights rounded with error feedback
(:mod:`adderize.train.gptq`) and calibrated on the given batches
(:func:`adderize.train.anneal.calibrate`: each layer's output scale and shift fitted, as
the label-free conversion does); then each layer alone is moved to its op (blend 0, every
other layer still float) and the change of the model's output is measured::

    score(layer, op) = ||y - y_float||^2 / ||y_float - mean(y_float)||^2

summed over the batches (0: the op changes nothing; 1: as much as the output varies). Each
op of each layer is priced by the energy cost table the search prices with
(:func:`adderize.energy.cost_table`: compute and memory), and the assignment with the
least total score whose energy is within ``budget`` (a fraction of the all-conv model's)
is found by dynamic programming over the energy saved (a multiple-choice knapsack, exact
up to 1/2000 of the saving needed). The first and last layers stay, as in the search.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.energy.cost import CostTable
from adderize.passes.mapping import OpMapping

__all__ = ["AUTO_OPS", "AutoChoice", "LayerChoice", "choose_ops", "sensitivity"]

_log = logging.getLogger(__name__)

#: the ops ``auto`` chooses from by default: no multiplication in a converted layer
AUTO_OPS = ("adder", "shift")
#: energy bins of the knapsack over the saving needed
BINS = 2000


@dataclass(frozen=True)
class LayerChoice:
    """One layer: the op chosen, and each candidate op's score and energy (pJ)."""

    name: str
    op: str
    scores: dict[str, float]
    energy_pj: dict[str, float]


@dataclass
class AutoChoice:
    """The per-layer choice of ``ops="auto"``."""

    layers: list[LayerChoice]
    budget: float
    energy_ratio: float  #: energy (compute and memory) of the choice / all-conv
    ops: tuple[str, ...]

    @property
    def assignment(self) -> dict[str, str]:
        return {x.name: x.op for x in self.layers}

    def mapping(self, base: OpMapping | None = None) -> OpMapping:
        """``base`` (default: an adder mapping) with each layer's chosen op by name."""
        return (base or OpMapping()).with_names(self.assignment)

    def table(self) -> str:
        head = f"{'layer':32s} {'op':7s} " + " ".join(f"{'score ' + o:>14s}" for o in self.ops)
        rows = [head]
        for x in self.layers:
            cells = " ".join(f"{x.scores[o]:14.4f}" for o in self.ops)
            rows.append(f"{x.name:32s} {x.op:7s} {cells}")
        count = {o: sum(x.op == o for x in self.layers) for o in self.ops}
        rows.append(
            f"auto: {', '.join(f'{n} {o}' for o, n in count.items())}; energy (compute and "
            f"memory) {self.energy_ratio:.3f}x all-conv (budget {self.budget:g}); score: "
            "output change with the layer alone converted"
        )
        return "\n".join(rows)


def _batches(calibrate: Iterable[torch.Tensor] | torch.Tensor | None) -> list[torch.Tensor]:
    if calibrate is None:
        raise AdderizeError(
            'ops="auto" measures each layer on data: pass calibrate=batches (input tensors, '
            "e.g. a few batches of training images)"
        )
    batches = list(calibrate.split(16)) if isinstance(calibrate, torch.Tensor) else []
    if not batches:
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calibrate]
    if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
        raise AdderizeError("calibrate must give input tensors (or (input, label) pairs)")
    return batches


@torch.no_grad()
def sensitivity(
    model: nn.Module, op: str, batches: Sequence[torch.Tensor], mapping: OpMapping | None = None
) -> dict[str, float]:
    """``{layer: score}`` of converting each layer alone to ``op`` (module docstring)."""
    from adderize.passes.convert import adderize
    from adderize.train.anneal import blend_layers, calibrate
    from adderize.train.gptq import round_shift_weights

    base = mapping or OpMapping()
    trial = adderize(model, OpMapping(default=op, keep_first=base.keep_first,
                                      keep_last=base.keep_last, preserve=True))  # fmt: skip
    round_shift_weights(trial, batches)  # as the conversion rounds them (no-op for others)
    calibrate(trial, batches)
    trial.eval()
    model.eval()
    ref = [model(x) for x in batches]
    spread = sum(float((r - r.mean(0, keepdim=True)).square().sum()) for r in ref)
    scores = {}
    for name, (layer, _) in blend_layers(trial).items():
        layer.blend = 0.0
        err = sum(float((trial(x) - r).square().sum()) for x, r in zip(batches, ref, strict=True))
        layer.blend = 1.0
        scores[name.removesuffix(".op")] = err / max(spread, 1e-30)
    return scores


def _knapsack(
    layers: Sequence[str],
    ops: Sequence[str],
    score: dict[str, dict[str, float]],
    saving: dict[str, dict[str, float]],
    need: float,
) -> dict[str, str]:
    """The assignment of least total score whose saving is at least ``need`` (pJ)."""
    if need <= 0:
        return {n: min(ops, key=lambda o: (score[n][o], -saving[n][o])) for n in layers}
    unit = need / BINS
    inf = float("inf")
    best = [0.0] + [inf] * BINS  # best[s]: least score saving at least s bins (capped)
    picks: list[list[tuple[int, str]]] = []
    for n in layers:
        new = [inf] * (BINS + 1)
        back: list[tuple[int, str]] = [(0, "")] * (BINS + 1)
        for o in ops:
            step = int(saving[n][o] / unit)  # floored: the knapsack never overstates a saving
            for s, value in enumerate(best):
                if value == inf:
                    continue
                t = min(BINS, s + step)
                if value + score[n][o] < new[t]:
                    new[t], back[t] = value + score[n][o], (s, o)
        best = new
        picks.append(back)
    if best[BINS] == inf:
        raise AdderizeError("no assignment of these ops meets the budget")
    out, s = {}, BINS
    for n, back in zip(reversed(layers), reversed(picks), strict=True):
        s, out[n] = back[s]
    return out


def choose_ops(
    model: nn.Module,
    budget: float,
    calibrate: Iterable[torch.Tensor] | torch.Tensor | None,
    ops: Sequence[str] = AUTO_OPS,
    mapping: OpMapping | None = None,
) -> AutoChoice:
    """Choose each convertible layer's op among ``ops`` (``"conv"`` allows float layers)
    with the least total output change under ``budget`` (a fraction of the all-conv
    energy, compute and memory, as the search prices it; in (0, 1]). ``calibrate``: input
    batches (module docstring)."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget <= 1:
        raise AdderizeError(
            f"budget is a fraction of the all-conv energy in (0, 1], got {budget!r}"
        )
    from adderize.energy import cost_table
    from adderize.passes.convert import adderize
    from adderize.passes.registry import priced_op

    ops = tuple(dict.fromkeys(ops))
    for op in ops:
        priced_op(op)  # registered, with a cost model: refused by name here
    batches = _batches(calibrate)
    base = mapping or OpMapping()
    probe = OpMapping(keep_first=base.keep_first, keep_last=base.keep_last, insert_norm=False)
    _, report = adderize(model, probe, return_report=True)
    layers = [r.name for r in report.replaced]
    table = cost_table(model, (1, *batches[0].shape[1:]), ops=tuple(dict.fromkeys(("conv", *ops))))
    energy = {n: {o: _cost(table, n, o) for o in ops} for n in layers}
    score: dict[str, dict[str, float]] = {n: {} for n in layers}
    for op in ops:
        found = sensitivity(model, op, batches, base) if op != "conv" else {}
        for n in layers:
            score[n][op] = found.get(n, 0.0)
        _log.info("auto: scored %d layers as %s", len(found), op)
    conv_pj = table.energy({})
    saving = {n: {o: _cost(table, n, "conv") - energy[n][o] for o in ops} for n in layers}
    need = conv_pj * (1 - budget)
    most = sum(max(saving[n].values()) for n in layers)
    if most + 1e-9 * conv_pj < need:
        floor = (conv_pj - most) / conv_pj
        raise AdderizeError(
            f"budget {budget:g} is below what {', '.join(ops)} can reach on this model: the "
            f"cheapest assignment costs {floor:.3f}x all-conv (the first and last layers stay)"
        )
    picked = _knapsack(layers, ops, score, saving, need)
    ratio = table.energy(picked) / conv_pj
    rows = [LayerChoice(n, picked[n], score[n], energy[n]) for n in layers]
    return AutoChoice(rows, float(budget), ratio, ops)


def _cost(table: CostTable, layer: str, op: str) -> float:
    """The energy (compute and memory) of ``layer`` as ``op`` in ``table`` (pJ)."""
    return float(table.costs[table.layers.index(layer), table.ops.index(op)])
