"""What a module *is*, for the pass (:func:`classify`): a 2-D conv, a 1-D conv, a linear
layer, or a special case that cannot be converted, with the reason. The op registry
(:mod:`adderize.passes.registry`) says what each op builds from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from torch.nn.modules.conv import _ConvNd

from adderize.nn import Conv2dLike, LinearLike, is_weight_std

__all__ = ["Kind", "Source", "classify"]


Kind = Literal["conv2d", "conv1d", "linear"]


@dataclass(frozen=True)
class Source:
    """What a module is, for the pass. ``kind`` is None when it cannot be converted."""

    kind: Kind | None
    reason: str = ""
    dynamic_same: bool = False


def _timm_classes(*names: str) -> tuple[type, ...]:
    import timm.layers as tl

    return tuple(getattr(tl, n) for n in names if hasattr(tl, n))


_SAME_PAD = ("Conv2dSame", "Conv2dSameExport")
# subclasses whose overridden forward is the parent's computation (verified by reading them)
_PLAIN_LINEAR = ("Linear",)  # timm.layers.Linear: casts dtypes only under TorchScript


def classify(module: nn.Module) -> Source | None:
    """Classify ``module``; None for modules that are neither convs nor linear layers."""
    cls = type(module)
    if isinstance(module, (Conv2dLike, LinearLike)):
        return Source(None, f"already multiplication-free ({cls.__name__})")
    if isinstance(module, nn.Conv2d):
        if is_weight_std(module):
            # the op keeps the standardisation (Conv2dLike.from_float reads it)
            return Source("conv2d", dynamic_same=bool(getattr(module, "same_pad", False)))
        if isinstance(module, _timm_classes(*_SAME_PAD)):
            return Source("conv2d", dynamic_same=True)
        if cls.forward is nn.Conv2d.forward:
            return Source("conv2d")
        return Source(
            None,
            f"{cls.__name__} overrides nn.Conv2d.forward; a layer swap cannot preserve it",
        )
    if isinstance(module, nn.Conv1d):
        if cls.forward is nn.Conv1d.forward:
            return Source("conv1d")
        return Source(
            None, f"{cls.__name__} overrides nn.Conv1d.forward; a layer swap cannot preserve it"
        )
    if isinstance(module, nn.Linear):
        if cls.forward is nn.Linear.forward or isinstance(module, _timm_classes(*_PLAIN_LINEAR)):
            return Source("linear")
        return Source(
            None, f"{cls.__name__} overrides nn.Linear.forward; a layer swap cannot preserve it"
        )
    if isinstance(module, _ConvNd):
        return Source(
            None, f"{cls.__name__}: only 1-D / 2-D convolutions and linear layers convert"
        )
    return None
