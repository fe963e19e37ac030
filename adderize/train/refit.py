"""The refit: the adder layers' weights fit to their float layers' outputs before the anneal.

A function-preserving conversion (:mod:`adderize.train.anneal`) starts every adder layer
from its conv weights, which the l1 distance reads as something unrelated; :func:`reconstruct`
moves each adder's weight to where its op computes its conv layer's output, layer by layer,
before the blend starts (``anneal.refit_steps`` in recipes).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.nn import Blendable
from adderize.train.anneal import as_float, blend_layers, hooked

__all__ = ["fit_residual", "fitted", "reconstruct", "refit_to_outputs"]


def fitted(layer: Blendable, o: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The per-channel least-squares affine of ``o`` closest to ``f`` (``s * o + t``,
    channels on ``layer.channel_dim``); differentiable in ``o``."""
    dims = layer._reduce_dims(o)
    oc = o - o.mean(dims, keepdim=True)
    mf = f.mean(dims, keepdim=True)
    var = oc.square().mean(dims, keepdim=True).clamp_min(1e-12)
    return oc * ((oc * (f - mf)).mean(dims, keepdim=True) / var) + mf


def fit_residual(layer: Blendable, o: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """How much of ``f`` the best per-channel affine of ``o`` leaves unexplained:
    ``min_{s,t} ||s * o + t - f||^2 / ||f - mean(f)||^2`` (0: exact, 1: uncorrelated)."""
    fc = f - f.mean(layer._reduce_dims(f), keepdim=True)
    return (fitted(layer, o, f) - f).square().sum() / fc.square().sum().clamp_min(1e-12)


def _check(steps: int, chain: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise AdderizeError(f"steps must be a positive int, got {steps!r}")
    if not 0 <= chain <= 1:
        raise AdderizeError(f"chain is a fraction of the steps in [0, 1], got {chain!r}")


def reconstruct(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    steps: int,
    lr: float = 0.04,
    chain: float = 0.0,
) -> dict[str, tuple[float, float]]:
    """Refit the weights of every blended op that needs it (``refit``, the adder layers)
    so that the op computes its float layer's output, layer by layer, before the anneal.

    An l1 distance to conv weights is nearly uncorrelated with the conv's output (residual
    0.7-0.99 of its variance on a trained ResNet), but the same layer with weights fit to
    the conv's outputs tracks it closely (0.05-0.3): the adder wants its weights inside the
    range of its inputs, not near zero where conv weights sit. The model runs as the float
    model (blend 1, eval mode) and the ops are fit by :func:`refit_to_outputs`. The float
    weights are kept first (``float_weight``): the float path still computes the original
    layer.

    Returns ``{layer: (residual before, residual after)}`` (the first and the last batch).
    Call before :func:`calibrate`, which fits the output scales to the refit ops.
    """
    _check(steps, chain)
    layers = {n: layer for n, (layer, _) in blend_layers(model).items() if layer.refit}
    if not layers:
        return {}
    for layer in layers.values():
        if layer.float_weight is None:
            layer.float_weight = layer.weight.detach().clone()
    with as_float(layers.values()):
        pairs = {n: (layer, layer) for n, layer in layers.items()}
        return refit_to_outputs(model, pairs, batches, steps, lr, chain)


def refit_to_outputs(
    model: nn.Module,
    pairs: Mapping[str, tuple[nn.Module, Blendable]],
    batches: Iterable[torch.Tensor],
    steps: int,
    lr: float = 0.04,
    chain: float = 0.0,
) -> dict[str, tuple[float, float]]:
    """Fit each ``op``'s weight of ``pairs`` (``{name: (module, op)}``) so that, on the
    input of ``module`` in ``model``, the op's output matches ``module``'s output up to a
    per-channel affine (:func:`fit_residual`).

    ``model`` runs in eval mode on ``steps`` batches; at each module the op's output on
    the module's input is compared with the module's output and the op's weight takes one
    Adam step per batch (learning rate ``lr``, cosine-decayed to 0). Every op sees its
    module's input, so all ops fit at once, independently, in one forward per batch (no
    backward through the network). In the last ``chain`` fraction of the steps each module
    passes on its op's fitted output instead, still against the first pass's outputs, so
    that each op also corrects the error of the ops before it. Used by :func:`reconstruct`
    (module and op the same blended layer) and by the one-shot search (the float conv and
    its adder candidate).

    Returns ``{name: (residual before, residual after)}`` (the first and the last batch).
    """
    _check(steps, chain)
    # the weight only: the bias (and a standardised conv's gain) serve the float path too
    optimizer = torch.optim.Adam([op.weight for _, op in pairs.values()], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    targets: dict[str, torch.Tensor] = {}
    mode = {"record": False, "chain": False}

    def fit(name: str, layer: Blendable) -> Any:
        def fn(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
            if mode["record"]:  # the float model's outputs, the targets of the chained pass
                targets[name] = out.detach()
                return None
            f = targets.pop(name) if mode["chain"] else out.detach()
            with torch.enable_grad():
                o = layer.op_forward(args[0].detach())
                residual = fit_residual(layer, o, f)
                residual.backward()  # each layer's graph is freed at once
            first.setdefault(name, float(residual))
            last[name] = float(residual)
            return fitted(layer, o.detach(), f) if mode["chain"] else None

        return fn

    chained_from = steps - round(chain * steps)
    with hooked(model, {module: fit(n, op) for n, (module, op) in pairs.items()}):
        for i, x in enumerate(itertools.islice(batches, steps)):
            if i >= chained_from:
                mode.update(record=True, chain=False)
                model(x)
                mode.update(record=False, chain=True)
            model(x)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
    if not last:
        raise AdderizeError("refit_to_outputs needs at least one batch")
    return {n: (first[n], last[n]) for n in pairs if n in last}
