"""One-shot operator search: a weight-sharing supernet as an NNI NAS model space.

:class:`OpSupernet` is an ``nni.nas.nn.pytorch.ModelSpace`` built from any float model
and its :class:`~adderize.search.space.OpSpace`: every searched layer becomes a
``LayerChoice`` over the space's ops (labelled with the layer's module name), so NNI's own
NAS strategies run on it: one-shot ones (``RandomOneShot``: uniform path sampling, SPOS)
train it as a supernet, multi-trial ones (``RegularizedEvolution``) then sample
sub-networks from the trained supernet.

How NNI rebuilds a model converted at run time: a ``ModelSpace`` records its constructor
arguments, and freezing a sample calls the constructor again inside NNI's model context,
where each ``LayerChoice`` returns the candidate the sample picks. The constructor here
takes the float model and the space and works on a deep copy, so a rebuild converts the
untouched float model again; no model code is written out.

Weight sharing: the candidates of a layer hold one weight tensor (and bias), the float
layer's, except the ops whose layer reads conv weights as something unrelated (``refit``:
the adder, an l1 distance to weights near zero). Each op reads the shared weight through
its own transform (the layers' ``op_forward``): as is for conv, sign and mean-|w| scale for
binary, power-of-two rounding for shift. An adder candidate holds its own weight (and
shares the bias), fit to the float layer's outputs on the calibration batches as the
function-preserving conversion fits it (:func:`adderize.train.refit.refit_to_outputs`):
with the float weight read as is, an all-adder sub-network scored 0.11-0.12 on digits
before and after supernet training and mixed ones 0.09-0.29, refit 0.83-0.98
(``benchmarks/oneshot_inheritance.py``). So one supernet training serves every
sub-network. Ops whose outputs live on another scale than the
conv's (an adder's ``-sum |x - w|`` is large and negative) are mapped back onto it per
output channel by the least-squares affine the function-preserving conversion fits
(:func:`fit_output_affine`, on a few batches through the float model), so the BatchNorm
after a layer sees the same statistics whichever op a step samples; BatchNorm is
re-estimated per sub-network before it is scored (:func:`score_subnet`).

The energy budget is a hard filter on sampled sub-networks (:func:`energy_filter`, the
cost-table sum, as the multi-trial search prices them).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from torch import nn

from adderize._errors import AdderizeError
from adderize.search.space import OpSpace, energy_budget

__all__ = [
    "OpSupernet",
    "energy_filter",
    "export_subnet",
    "fit_output_affine",
    "layer_ops",
    "refit_candidates",
    "score_subnet",
    "shared_candidates",
]

log = logging.getLogger(__name__)


def shared_candidates(layer: nn.Module, ops: Iterable[str]) -> dict[str, nn.Module]:
    """``{op: module}`` computing ``layer``'s job with each op, all reading ``layer``'s
    bias and, except ops whose layer class declares ``refit`` (the adder: it keeps a copy,
    to be fit by :func:`refit_candidates`), its weight (the same Parameters): ``conv`` is
    ``layer`` itself."""
    from adderize.passes.registry import get_op
    from adderize.passes.sources import classify

    source = classify(layer)
    if source is None or source.kind is None:
        raise AdderizeError(f"{type(layer).__name__} is not a layer the search converts")
    out: dict[str, nn.Module] = {}
    for op in ops:
        built = get_op(op).build(layer, source)
        if built is not layer:
            if not getattr(built, "refit", False):
                built.weight = layer.weight
            if getattr(layer, "bias", None) is not None:
                built.bias = layer.bias
        out[op] = built
    return out


def refit_candidates(
    model: nn.Module,
    candidates: Mapping[str, Mapping[str, nn.Module]],
    batches: list[Any],
    steps: int,
    lr: float,
) -> dict[str, tuple[float, float]]:
    """Fit the own weight of every ``refit`` candidate (the adders) to its float layer's
    outputs in ``model``, for ``steps`` Adam steps cycling over ``batches`` (inputs); see
    :func:`adderize.train.refit.refit_to_outputs`. Returns ``{"layer/op": (residual
    before, after)}``."""
    from adderize.train.refit import refit_to_outputs

    pairs = {
        f"{name}/{op}": (model.get_submodule(name), cand)
        for name, cands in candidates.items()
        for op, cand in cands.items()
        if getattr(cand, "refit", False)  # the float conv itself has no refit
    }
    if not pairs or not batches or steps < 1:
        return {}
    return refit_to_outputs(model, pairs, itertools.cycle(batches), steps, lr)


@torch.no_grad()
def fit_output_affine(
    model: nn.Module, candidates: Mapping[str, Mapping[str, nn.Module]], batches: Iterable[Any]
) -> int:
    """Fit, per layer and per non-conv candidate, the per-channel ``scale * op + shift``
    closest (least squares) to the float layer's output, on ``batches`` run through
    ``model`` (the float model holding the layers); the candidates then compute the fitted
    affine of their op (``blend = 0`` with ``blend_scale`` / ``blend_shift``). Candidates
    with data-initialised state (binary thresholds) set it on the first batch. Returns the
    number of batches."""
    from adderize.nn import Blendable
    from adderize.train.anneal import Moments, run_hooked

    stats: dict[tuple[str, str], Moments] = {}

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            for op, cand in candidates[name].items():
                if cand is mod or not isinstance(cand, Blendable):
                    continue
                was = cand.training
                cand.train()  # data-initialised state is set in training mode
                o = cand.op_forward(args[0])
                cand.train(was)
                stats.setdefault((name, op), Moments()).add(
                    cand.channels_first(out), cand.channels_first(o)
                )

        return fn

    hooks = {model.get_submodule(n): hook(n) for n in candidates}
    seen = run_hooked(model, hooks, batches, "fit_output_affine")
    for (name, op), moments in stats.items():
        cand = candidates[name][op]
        scale, shift = moments.fit()
        ref = cand.weight
        cand.blend_scale = scale.to(ref.device, ref.dtype)
        cand.blend_shift = shift.to(ref.device, ref.dtype)
    return seen


def energy_filter(space: OpSpace) -> Any:
    """``sample -> bool``: whether a sample ``{layer: op}`` is within the energy budget."""

    def within(sample: Mapping[str, Any]) -> bool:
        return space.feasible({n: str(sample[n]) for n in space.layers})

    return within


class OpSupernet(ModelSpace):
    """The NNI model space of ``space`` over a deep copy of the float ``model`` (see the
    module docstring); ``batches`` (inputs) fit the adder candidates' weights
    (:func:`refit_candidates`, ``refit_steps`` Adam steps at ``refit_lr`` cycling over them)
    and then every candidate's output affine (:func:`fit_output_affine`). ``model`` is the
    network with its ``LayerChoice`` s."""

    def __init__(
        self,
        model: nn.Module,
        space: OpSpace,
        batches: Iterable[Any] = (),
        refit_steps: int = 30,
        refit_lr: float = 0.2,
    ) -> None:
        super().__init__()
        model = copy.deepcopy(model)
        candidates = {n: shared_candidates(model.get_submodule(n), space.ops) for n in space.layers}
        batches = list(batches)
        if batches:
            self.refit_residuals = refit_candidates(
                model, candidates, batches, refit_steps, refit_lr
            )
            fit_output_affine(model, candidates, batches)
        choices = {}
        for name, cands in candidates.items():
            choice = LayerChoice(dict(cands), label=name)
            model.set_submodule(name, choice)
            choices[name] = choice.choice
        self.model = model.train()  # a supernet to train (Lightning keeps modules' modes)
        self.space = space
        # the budget as a constraint of the space: NNI's samplers and freeze reject samples
        # over it (multi-trial strategies redraw them); a search may lower ``energy_cap``
        # below the budget to sample one energy range
        self.energy_cap = space.budget_pj
        self.budget = self.add_mutable(energy_budget(space, choices, lambda: self.energy_cap))

    def freeze(self, sample: dict[str, Any]) -> nn.Module:
        """The sub-network ``sample`` picks, with the supernet's (trained) weights: a copy
        along the replaced paths. A sample over the energy budget raises NNI's
        ``SampleValidationError`` (strategies then draw another)."""
        error = self.budget.check_contains(sample)
        if error is not None:
            raise error
        # one deep copy of the network with each LayerChoice swapped for its chosen
        # candidate (shared, as NNI's own freeze shares it): NNI's ``recursive_freeze``
        # copies every ancestor of a choice, all candidates included, 10x the time here
        memo: dict[int, Any] = {}
        for name in self.space.layers:
            choice = self.model.get_submodule(name)
            memo[id(choice)] = choice.freeze(sample)
        return copy.deepcopy(self, memo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@torch.no_grad()
def score_subnet(
    subnet: nn.Module, calibration: Iterable[Any], val: Iterable[tuple[Any, Any]]
) -> float:
    """Top-1 accuracy of a sub-network that inherited the supernet's weights, after
    re-estimating its BatchNorm statistics on ``calibration`` (inputs)."""
    from adderize.train.calibrate import recalibrate_bn

    recalibrate_bn(subnet, calibration)
    subnet.eval()
    right = total = 0
    for x, y in val:
        right += int((subnet(x).argmax(1) == y).sum())
        total += len(y)
    return right / max(total, 1)


def layer_ops(subnet: nn.Module, layers: Iterable[str]) -> dict[str, str]:
    """``{layer: op}`` of a frozen sub-network (read from its layers' classes)."""
    from adderize.passes.registry import op_of_layer

    return {n: op_of_layer(subnet.get_submodule(f"model.{n}")) or "conv" for n in layers}


def export_subnet(float_model: nn.Module, space: OpSpace, subnet: nn.Module) -> nn.Module:
    """A scored sub-network (frozen from an :class:`OpSupernet` over ``float_model``) as
    the converted model ``adderize`` makes of ``float_model`` with its ops, holding the
    sub-network's weights and BatchNorm statistics, each op's output affine folded into the
    BatchNorm after its layer: ``adderize.save`` saves it, ``adderize.load`` rebuilds it,
    and in eval mode it computes what the sub-network computed when it was scored.

    The conversion runs function-preserving (``preserve=True``), which pairs each converted
    layer with the BatchNorm it folds into; a searched layer with no BatchNorm after it in
    ``float_model`` (the conversion would insert one) is refused."""
    from adderize.passes.convert import META_ATTR, adderize
    from adderize.train.anneal import Anneal

    ops = layer_ops(subnet, space.layers)
    mapping = replace(space.mapping(ops), insert_norm=True, preserve=True)
    model = adderize(copy.deepcopy(float_model), mapping, strict=True)
    assert isinstance(model, nn.Module)
    state = subnet.model.state_dict()
    extra = set(model.state_dict()) ^ set(state)
    if extra:
        raise AdderizeError(
            f"cannot export this sub-network: the converted model and the sub-network hold "
            f"different tensors (e.g. {sorted(extra)[0]!r}); a searched layer without a "
            "BatchNorm after it gets one inserted by the conversion"
        )
    model.load_state_dict(state)
    if any(op != "conv" for op in ops.values()):
        anneal = Anneal(model, 1)
        for name, (layer, _) in anneal.layers.items():
            cand = subnet.model.get_submodule(name)
            if cand.blend_scale is not None:  # fitted when the supernet had batches
                layer.blend_scale = cand.blend_scale.detach().clone()
                layer.blend_shift = cand.blend_shift.detach().clone()
        anneal.finalize()  # blend 0, the affines folded into the BatchNorms
    setattr(model, META_ATTR, space.mapping(ops).to_dict())  # saved: best_ops.yaml's ops
    return model.eval()
