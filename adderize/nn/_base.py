"""Shared argument handling for the drop-in ``nn.Conv2d`` / ``nn.Linear`` replacements."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.common_types import _size_2_t
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.utils import _pair

__all__ = ["Conv2dLike", "LinearLike"]

_C = TypeVar("_C", bound="Conv2dLike")
_L = TypeVar("_L", bound="LinearLike")


class Conv2dLike(_ConvNd):
    """``nn.Conv2d``'s signature, parameters and padding semantics, without its forward.

    Deliberately not a subclass of ``nn.Conv2d``: code that looks for convolutions
    (``isinstance(m, nn.Conv2d)``: weight init, the conversion pass, op counters) must not
    mistake a multiplication-free layer for one.

    ``dynamic_same=True`` reproduces TensorFlow/timm ``Conv2dSame`` padding, computed from the
    input size at run time (needed for ``'same'`` with stride > 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t | str = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        dynamic_same: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            _pair(kernel_size),
            _pair(stride),
            padding if isinstance(padding, str) else _pair(padding),
            _pair(dilation),
            False,
            _pair(0),
            groups,
            bias,
            padding_mode,  # type: ignore[arg-type]
            device=device,
            dtype=dtype,
        )
        if dynamic_same and (padding not in (0, (0, 0)) or padding_mode != "zeros"):
            raise ValueError(
                "dynamic_same=True computes the padding itself: use padding=0 and "
                f"padding_mode='zeros' (got padding={padding!r}, padding_mode={padding_mode!r})"
            )
        self.dynamic_same = dynamic_same

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` explicitly, exactly as ``nn.Conv2d`` would, so kernels see padding 0."""
        if self.dynamic_same:
            pads: list[int] = []
            for size, k, s, d in zip(
                reversed(x.shape[-2:]),
                reversed(self.kernel_size),
                reversed(self.stride),
                reversed(self.dilation),
                strict=True,
            ):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
        else:
            pads = list(self._reversed_padding_repeated_twice)
        if not any(pads):
            return x
        if self.padding_mode == "zeros":
            return F.pad(x, pads)
        return F.pad(x, pads, mode=self.padding_mode)

    @classmethod
    def from_float(cls: type[_C], mod: nn.Conv2d, **kwargs: Any) -> _C:
        """Build from an ``nn.Conv2d``, copying its geometry, weight and bias.

        Extra keyword arguments (e.g. ``dynamic_same``, ``p``) go to the constructor.
        """
        if not isinstance(mod, nn.Conv2d):
            raise TypeError(f"{cls.__name__}.from_float expects an nn.Conv2d, got {type(mod)}")
        new = cls(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,  # type: ignore[arg-type]
            stride=mod.stride,  # type: ignore[arg-type]
            padding=mod.padding,  # type: ignore[arg-type]
            dilation=mod.dilation,  # type: ignore[arg-type]
            groups=mod.groups,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode,
            device=mod.weight.device,
            dtype=mod.weight.dtype,
            **kwargs,
        )
        _copy_params(mod, new)
        return new

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.dynamic_same:
            s += ", dynamic_same=True"
        return s


class LinearLike(nn.Linear):
    """Base of the ``nn.Linear`` replacements: same signature and parameters.

    Subclasses ``nn.Linear`` for its init and repr; the conversion pass and op counters
    check for these classes before ``nn.Linear``.
    """

    @classmethod
    def from_float(cls: type[_L], mod: nn.Linear, **kwargs: Any) -> _L:
        """Build from an ``nn.Linear``, copying its weight and bias."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_float expects an nn.Linear, got {type(mod)}")
        new = cls(
            mod.in_features,
            mod.out_features,
            bias=mod.bias is not None,
            device=mod.weight.device,
            dtype=mod.weight.dtype,
            **kwargs,
        )
        _copy_params(mod, new)
        return new


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)  # type: ignore[operator]
        if getattr(src, "bias", None) is not None:
            dst.bias.copy_(src.bias)  # type: ignore[union-attr, operator]
    dst.train(src.training)
