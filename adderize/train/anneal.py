"""The anneal of a function-preserving conversion: from the float model to the op model.

``adderize(model, preserve=True)`` returns a model that computes exactly what ``model``
does: every converted layer starts at ``blend = 1``, its float self (see
:class:`adderize.nn.Blendable`). :class:`Anneal` then lowers every layer's blend
linearly (or along a cosine) to 0 over ``steps`` optimizer steps, while fine-tuning with
distillation from the original moves the weights to where the op computes what the float
layer did::

    y = lambda * conv(x; W) + (1 - lambda) * (s * adder(x; W) + t)

The conv path keeps the original weights, frozen; the trainable weights serve the op
path only. Before the anneal, :func:`adderize.train.refit.reconstruct` refits the adder
layers' weights to their conv layers' outputs (an l1 distance to the conv weights
themselves computes something unrelated). ``s`` and ``t`` (per output channel) are the
least-squares fit of the conv output by the op output: fitted before the anneal by
:func:`calibrate` on a few training batches, then tracked as running averages, and folded
into the BatchNorm that follows every blended layer when the anneal ends
(:meth:`Anneal.finalize`, exact in eval mode): the result is a plain op model, with no
multiplication in any converted layer. While blending, every layer
also reports its op's local reconstruction error of the conv output (:meth:`Anneal.loss`),
which fine-tuning adds to its objective: each op learns its conv layer's function from the
first step, while the network as a whole stays close to the original.

Why a blend and not the papers' l_p schedule from an exact l_2 start: both start from the
original function (``-||x - w||^2 / 2 = x.w - ||w||^2 / 2 - ||x||^2 / 2``), but every step of
the blend runs on the conv kernel and the l_1 kernel, where l_p steps (1 < p < 2) need
``|d|^p`` per MAC, 20-28x a conv step here (``benchmarks/lp_schedule.py``); docs/method.md's
anneal table measures both starts.

The schedule is training state: :meth:`Anneal.state_dict` holds the step, and each layer's
``s`` and ``t``, for checkpoints and ``--resume``. It is the same on every DDP rank
(calibrate before wrapping the model: DDP broadcasts rank 0's buffers).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from adderize._errors import AdderizeError, AdderizeTypeError
from adderize.nn import Blendable
from adderize.passes.convert import BLEND_ATTR

__all__ = [
    "SHAPES",
    "Anneal",
    "Moments",
    "as_float",
    "blend_layers",
    "calibrate",
    "fold_into_norm",
    "hooked",
    "run_hooked",
]

SHAPES = ("linear", "cosine")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def blend_layers(model: nn.Module) -> dict[str, tuple[Blendable, nn.Module]]:
    """``{name: (layer, BatchNorm after it)}`` of a model converted with ``preserve=True``."""
    model = _unwrap(model)
    table = getattr(model, BLEND_ATTR, None)
    if not table:
        raise AdderizeError(
            "the model was not converted with preserve=True (adderize(model, preserve=True)): "
            "it has no blended layers to anneal"
        )
    out = {}
    for name, norm in table.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, Blendable)
        out[name] = (layer, model.get_submodule(norm))
    return out


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Fit every blended layer's output scale and shift on ``batches`` (inputs only).

    The model runs as the float model (blend 1, eval mode); at each layer the op's output
    ``o`` is computed beside the float output ``f`` and, per channel, ``scale * o + shift``
    is the least-squares fit of ``f`` (``scale = cov(f, o) / var(o)``). The float layers'
    weights are frozen from here on (``float_weight``): the trainable weight serves the op.
    Returns the number of batches used. The model's mode and blends are restored.
    """
    layers = blend_layers(model)
    stats: dict[str, Moments] = {}

    def hook(name: str, layer: Blendable) -> Any:
        def fn(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            was = layer.training
            layer.train()  # ops with data-initialised state (binary thresholds) set it now
            o = layer.op_forward(args[0])
            layer.train(was)
            moments = stats.setdefault(name, Moments())
            moments.add(layer.channels_first(out), layer.channels_first(o))

        return fn

    with as_float(layer for layer, _ in layers.values()):
        hooks = {layer: hook(n, layer) for n, (layer, _) in layers.items()}
        seen = run_hooked(model, hooks, batches, "calibrate")
    for name, (layer, norm) in layers.items():
        moments = stats[name]
        if _inserted(model, name, norm):
            _identity_on_data(norm, *moments.target())
        scale, shift = moments.fit()
        ref = layer.weight
        layer.blend_scale = scale.to(ref.device, ref.dtype)
        layer.blend_shift = shift.to(ref.device, ref.dtype)
        if layer.float_weight is None:  # set already when the op was refit (train.refit)
            layer.float_weight = ref.detach().clone()
    return seen


@contextlib.contextmanager
def as_float(layers: Iterable[Blendable]) -> Iterator[None]:
    """``layers`` at blend 1 (each its float layer) inside the block; their blends are
    restored after, also on an error."""
    saved = [(layer, layer.blend) for layer in layers]
    try:
        for layer, _ in saved:
            layer.blend = 1.0
        yield
    finally:
        for layer, blend in saved:
            layer.blend = blend


@contextlib.contextmanager
def hooked(model: nn.Module, hooks: dict[nn.Module, Any]) -> Iterator[None]:
    """``model`` in eval mode, without gradients, with forward hooks ``{module: hook}``;
    the hooks are removed and the mode restored after."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def run_hooked(
    model: nn.Module, hooks: dict[nn.Module, Any], batches: Iterable[Any], caller: str
) -> int:
    """Run ``model`` on ``batches`` under :func:`hooked`; returns the number of batches
    (``caller`` names the function in the error for none)."""
    seen = 0
    with hooked(model, hooks):
        for x in batches:
            model(x)
            seen += 1
    if not seen:
        raise AdderizeError(f"{caller} needs at least one batch")
    return seen


class Moments:
    """Per-channel sums (float64) for the least-squares fit of a float output ``f`` by an
    op output ``o``, both ``[channels, elements]``, accumulated over batches."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] | None = None

    def add(self, f: torch.Tensor, o: torch.Tensor) -> None:
        f64, o64 = f.double(), o.double()
        n = torch.tensor(float(f64.shape[1]), dtype=torch.float64)
        row = [f64.sum(1), o64.sum(1), (o64 * o64).sum(1), (f64 * o64).sum(1), n]
        row.append((f64 * f64).sum(1))
        if self.sums is None:
            self.sums = [torch.zeros_like(r) for r in row]
        for a, r in zip(self.sums, row, strict=True):
            a += r

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel: ``scale * o + shift`` closest to ``f``
        (``scale = cov(f, o) / var(o)``)."""
        assert self.sums is not None, "no batch was added"
        sf, so, soo, sfo, n, _ = self.sums
        mf, mo = sf / n, so / n
        vo = (soo / n - mo * mo).clamp_min(1e-12)
        scale = (sfo / n - mf * mo) / vo
        return scale, mf - scale * mo

    def target(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) per channel of ``f``."""
        assert self.sums is not None, "no batch was added"
        sf, _, _, _, n, sff = self.sums
        mf = sf / n
        return mf, (sff / n - mf * mf).clamp_min(0.0)


def _inserted(model: nn.Module, name: str, norm: nn.Module) -> bool:
    """Whether ``norm`` was inserted by the conversion after layer ``name`` (a WithNorm)."""
    parent = name.removesuffix(".op")
    return parent != name and _unwrap(model).get_submodule(parent).norm is norm


def _identity_on_data(norm: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Make an inserted BatchNorm the identity on data with this ``mean`` / ``var``.

    Inserted as ``running_var = 1 - eps`` it is the identity in eval mode only: training
    normalises by the batch statistics and the running statistics follow them, so the
    function would change as soon as fine-tuning starts. With the running statistics set to
    the data's and the affine undoing the normalisation (``weight = sqrt(var + eps)``,
    ``bias = mean``) it stays the identity in eval mode (exactly) and in training mode (up
    to the batch's deviation from the data's statistics).
    """
    assert isinstance(norm, nn.modules.batchnorm._BatchNorm)
    rm, rv = norm.running_mean, norm.running_var
    assert rm is not None and rv is not None and norm.weight is not None
    rm.copy_(mean.to(rm.dtype))
    rv.copy_(var.to(rv.dtype))
    norm.weight.copy_(torch.sqrt(var + norm.eps).to(norm.weight.dtype))
    norm.bias.copy_(mean.to(norm.bias.dtype))


@torch.no_grad()
def fold_into_norm(layer: Blendable, norm: nn.Module) -> None:
    """Move ``layer``'s output scale/shift into the BatchNorm ``norm`` that reads its output.

    ``norm(s * y + t)`` in eval mode equals ``norm'(y)`` with mean ``(mean - t) / s``,
    variance ``(var + eps) / s^2 - eps`` and the sign of ``s`` moved into the norm's weight.

    A channel whose scale is 0 (or so small that this variance overflows float32) computes
    a constant: a dead channel of a pretrained model (``running_var == 0``, its conv output
    constant on all data), whose least-squares scale is 0. Its norm becomes that constant,
    exactly: weight 0, bias ``norm(t)``, statistics ``(0, 1)``. Any non-finite result
    raises, naming the channels.
    """
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        raise AdderizeTypeError(f"can only fold into a BatchNorm, got {type(norm).__name__}")
    scale, shift = layer.blend_scale, layer.blend_shift
    if scale is None or shift is None:
        return
    if norm.running_mean is None or norm.running_var is None:
        raise AdderizeError("cannot fold a scale into a BatchNorm without running statistics")
    s, t = scale.to(torch.float64), shift.to(torch.float64)
    mean, var = norm.running_mean.double(), norm.running_var.double()
    new_var = (var + norm.eps) / (s * s) - norm.eps
    dead = ~torch.isfinite(new_var) | (new_var > _MAX_VAR)
    if bool(dead.any()):
        if norm.weight is None or norm.bias is None:
            raise AdderizeError(
                f"{int(dead.sum())} channel(s) of the op layer are constant (scale 0, e.g. "
                f"channel {int(dead.nonzero()[0])}): folding them needs a BatchNorm with affine "
                "weight and bias"
            )
        w, b = norm.weight.double(), norm.bias.double()
        constant = w * (t - mean) / torch.sqrt(var + norm.eps) + b  # norm(s * y + t), s = 0
        norm.bias.copy_(torch.where(dead, constant, b).to(norm.bias.dtype))
        norm.weight.copy_(torch.where(dead, 0.0, w).to(norm.weight.dtype))
    s_live = torch.where(dead, 1.0, s)
    norm.running_mean.copy_(torch.where(dead, 0.0, (mean - t) / s_live))
    norm.running_var.copy_(torch.where(dead, 1.0, new_var))
    if norm.weight is not None:
        norm.weight.mul_(torch.sign(s_live).to(norm.weight.dtype))
    elif bool((s < 0).any()):
        raise AdderizeError("cannot fold a negative scale into a BatchNorm without affine weight")
    tensors = [norm.running_mean, norm.running_var, norm.weight, norm.bias]
    bad = [x for x in tensors if x is not None and not bool(torch.isfinite(x).all())]
    if bad:
        raise AdderizeError(
            f"folding the op's scale (range {float(s.min()):.3g}..{float(s.max()):.3g}) and "
            "shift into its BatchNorm gave non-finite statistics"
        )
    layer.blend_scale = layer.blend_shift = None


#: a folded variance above this (float32 holds 3.4e38; (var + eps) must stay finite) marks
#: a channel whose scale is effectively 0: folded as the constant it computes
_MAX_VAR = 1e30


class Anneal:
    """Lowers the blend of every converted layer from 1 to 0 over ``steps`` steps.

    Args:
        model: a model converted with ``preserve=True`` (or its DDP wrapper), calibrated
            (:func:`calibrate`) before the first :meth:`step`.
        steps: optimizer steps from blend 1 to blend 0 (call :meth:`step` once per step).
        shape: ``"linear"`` or ``"cosine"`` (slow at both ends).

    When the blend reaches 0, :meth:`step` calls :meth:`finalize`: scales folded into the
    BatchNorms, the layers plain ops.
    """

    def __init__(self, model: nn.Module, steps: int, shape: str = "linear") -> None:
        if not isinstance(steps, int) or steps < 1:
            raise AdderizeError(f"steps must be a positive int, got {steps!r}")
        if shape not in SHAPES:
            raise AdderizeError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
        self.model = _unwrap(model)
        self.layers = blend_layers(self.model)
        self.steps, self.shape = steps, shape
        self.last_step = 0
        self.finalized = False

    @property
    def blend(self) -> float:
        frac = min(self.last_step / self.steps, 1.0)
        if self.shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return 1.0 - frac

    def _apply(self) -> None:
        lam = self.blend
        for layer, _ in self.layers.values():
            layer.blend = lam

    def step(self) -> float:
        """Advance one step and set the new blend on every layer; returns it."""
        if self.finalized:
            return 0.0
        if self.last_step == 0:
            missing = [n for n, (layer, _) in self.layers.items() if layer.blend_scale is None]
            if missing:
                raise RuntimeError(
                    f"{len(missing)} blended layer(s) (e.g. {missing[0]!r}) are not calibrated: "
                    "call adderize.train.anneal.calibrate(model, batches) first"
                )
        self.last_step += 1
        self._apply()
        if self.last_step >= self.steps:
            self.finalize()
        return self.blend

    def loss(self) -> torch.Tensor | float:
        """Mean local reconstruction error of the blended layers in the last training
        forward (0 when none was computed: blend 1 or 0, eval mode, or finalized)."""
        losses = [layer.blend_loss for layer, _ in self.layers.values()]
        for layer, _ in self.layers.values():
            layer.blend_loss = None
        found = [x for x in losses if x is not None]
        return torch.stack(found).mean() if found else 0.0

    def finalize(self) -> None:
        """End the anneal now: blend 0, scales folded into the BatchNorms, plain op layers."""
        for name, (layer, norm) in self.layers.items():
            layer.blend = 0.0
            try:
                fold_into_norm(layer, norm)
            except AdderizeError as e:
                raise AdderizeError(f"layer {name!r}: {e}") from None
            layer.float_weight = layer.blend_loss = None
        if hasattr(self.model, BLEND_ATTR):
            delattr(self.model, BLEND_ATTR)
        self.last_step = max(self.last_step, self.steps)
        self.finalized = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "steps": self.steps,
            "shape": self.shape,
            "finalized": self.finalized,
            "scale": {n: layer.blend_scale for n, (layer, _) in self.layers.items()},
            "shift": {n: layer.blend_shift for n, (layer, _) in self.layers.items()},
            "float_weight": {n: layer.float_weight for n, (layer, _) in self.layers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a schedule saved by :meth:`state_dict` onto the same (unfinished) model;
        the BatchNorm statistics of a finalized anneal come with the model's state dict."""
        self.last_step, self.steps = int(state["last_step"]), int(state["steps"])
        self.shape = str(state["shape"])
        for name, (layer, _) in self.layers.items():
            layer.blend_scale, layer.blend_shift = state["scale"][name], state["shift"][name]
            layer.float_weight = state["float_weight"][name]
        if state["finalized"]:
            for layer, _ in self.layers.values():
                layer.blend, layer.blend_scale, layer.blend_shift = 0.0, None, None
                layer.float_weight = None
            if hasattr(self.model, BLEND_ATTR):
                delattr(self.model, BLEND_ATTR)
            self.finalized = True
        else:
            self._apply()
