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

from adderize._errors import AdderizeError, AdderizeTypeError
from adderize.nn._blend import Blendable

__all__ = ["Conv1dLike", "Conv2dLike", "LinearLike", "is_weight_std"]

_C = TypeVar("_C", bound="Conv2dLike")
_L = TypeVar("_L", bound="LinearLike")


class Conv2dLike(_ConvNd, Blendable):
    """``nn.Conv2d``'s signature, parameters and padding semantics; subclasses define
    ``op_forward`` (``forward`` is :class:`Blendable`'s).

    Deliberately not a subclass of ``nn.Conv2d``: code that looks for convolutions
    (``isinstance(m, nn.Conv2d)``: weight init, the conversion pass, op counters) must not
    mistake a multiplication-free layer for one.

    ``dynamic_same=True`` reproduces TensorFlow/timm ``Conv2dSame`` padding, computed from the
    input size at run time (needed for ``'same'`` with stride > 1).

    ``weight_std_eps`` (not None) standardises the weight at every forward, as timm's
    ``StdConv2d`` (BiT, ResNetV2) does: each filter to zero mean and unit variance;
    ``weight_std_gain=True`` adds ``ScaledStdConv2d``'s (NFNet, NF-ResNet) learnable
    per-filter ``gain`` times ``gamma / sqrt(fan_in)``. The op and the float path both use
    the standardised weight (:meth:`op_weight`); the parameter stays the raw ``weight``, so
    the state dict keeps the replaced layer's keys.
    """

    gain: nn.Parameter | None
    #: the float layer class ``from_float`` converts
    float_type: type[_ConvNd] = nn.Conv2d

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
        weight_std_eps: float | None = None,
        weight_std_gain: bool = False,
        weight_std_gamma: float = 1.0,
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
            raise AdderizeError(
                "dynamic_same=True computes the padding itself: use padding=0 and "
                f"padding_mode='zeros' (got padding={padding!r}, padding_mode={padding_mode!r})"
            )
        self.dynamic_same = dynamic_same
        if weight_std_gain and weight_std_eps is None:
            raise AdderizeError("weight_std_gain=True needs weight_std_eps (the standardisation)")
        self.weight_std_eps = None if weight_std_eps is None else float(weight_std_eps)
        self.gain_scale = float(weight_std_gamma) * self.weight[0].numel() ** -0.5
        self.gain = None
        if weight_std_gain:
            self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1, device=device, dtype=dtype))
        self._init_blend()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Conv2d's memory format: channels_last out for channels_last in, else contiguous
        # (the adder kernels compute NHWC; a flattening parent may call .view on the result)
        y = Blendable.forward(self, x)
        channels_last = x.dim() == 4 and not x.is_contiguous()
        channels_last = channels_last and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return y.contiguous(memory_format=fmt)

    def _standardize(self, w: torch.Tensor) -> torch.Tensor:
        if self.weight_std_eps is None:
            return w
        gain = None if self.gain is None else (self.gain * self.gain_scale).view(-1)
        return F.batch_norm(
            w.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=gain,
            training=True,
            momentum=0.0,
            eps=self.weight_std_eps,
        ).reshape_as(w)

    def op_weight(self) -> torch.Tensor:
        return self._standardize(self.weight)

    def _float_weight(self) -> torch.Tensor:
        return self._standardize(Blendable._float_weight(self))

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._float_weight()
        return F.conv2d(self.pad_input(x), w, self.bias, self.stride, 0, self.dilation, self.groups)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` explicitly, exactly as ``nn.Conv2d`` would, so kernels see padding 0."""
        pads = self.input_pads(x)
        if not any(pads):
            return x
        if self.padding_mode == "zeros":
            return F.pad(x, pads)
        return F.pad(x, pads, mode=self.padding_mode)

    def input_pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """The padding ``nn.Conv2d`` would apply to ``x``, as ``F.pad`` takes it (left,
        right, top, bottom; a 1-D layer's 2-D view has 0 at top and bottom)."""
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
        return tuple(pads) + (0,) * (4 - len(pads))  # type: ignore[return-value]

    @classmethod
    def from_float(cls: type[_C], mod: _ConvNd, **kwargs: Any) -> _C:
        """Build from an ``nn.Conv2d``, copying its geometry, weight and bias.

        Extra keyword arguments (e.g. ``dynamic_same``, ``p``) go to the constructor. A
        weight-standardised conv (timm's ``StdConv2d`` / ``ScaledStdConv2d`` and their
        ``Same`` variants) keeps its standardisation, gain and dynamic 'same' padding.
        """
        if not isinstance(mod, cls.float_type):
            raise AdderizeTypeError(
                f"{cls.__name__}.from_float expects an nn.{cls.float_type.__name__}, got "
                f"{type(mod)}"
            )
        if is_weight_std(mod):
            kwargs.setdefault("weight_std_eps", float(mod.eps))  # type: ignore[arg-type]
            if isinstance(getattr(mod, "gain", None), torch.Tensor):
                kwargs.setdefault("weight_std_gain", True)
                fan_in = mod.weight[0].numel()
                kwargs.setdefault("weight_std_gamma", float(mod.scale) * fan_in**0.5)  # type: ignore[arg-type]
            if getattr(mod, "same_pad", False):
                kwargs.setdefault("dynamic_same", True)
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
        if new.gain is not None:
            with torch.no_grad():
                new.gain.copy_(mod.gain)  # type: ignore[arg-type]
        return new

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.dynamic_same:
            s += ", dynamic_same=True"
        if self.weight_std_eps is not None:
            s += f", weight_std_eps={self.weight_std_eps:g}"
            s += ", weight_std_gain=True" if self.gain is not None else ""
        return s


class Conv1dLike(Conv2dLike):
    """``nn.Conv1d``'s signature and state dict, computed as a ``(1, k)`` 2-D layer.

    Put it first in the bases of a 2-D op to get the op's 1-D layer
    (``class Adder1d(Conv1dLike, Adder2d)``): the input ``[N, C, L]`` runs as
    ``[N, C, 1, L]`` through the 2-D op, the weight parameter keeps ``nn.Conv1d``'s shape
    ``[out, in / groups, k]`` (the op reads it as ``[out, in / groups, 1, k]``). The
    geometry attributes (``kernel_size``, ``stride``, ...) are the 2-D ``(1, k)`` forms.
    ``from_float`` takes an ``nn.Conv1d``.
    """

    float_type = nn.Conv1d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] | str = 0,
        dilation: int | tuple[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        def one(v: Any) -> int:
            return int(v[0] if isinstance(v, (tuple, list)) else v)

        pad = padding if isinstance(padding, str) else (0, one(padding))
        super().__init__(
            in_channels,
            out_channels,
            (1, one(kernel_size)),
            stride=(1, one(stride)),
            padding=pad,
            dilation=(1, one(dilation)),
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
            **kwargs,
        )
        self.weight = nn.Parameter(self.weight.detach().squeeze(2))

    def op_weight(self) -> torch.Tensor:
        return super().op_weight().unsqueeze(2)

    def _float_weight(self) -> torch.Tensor:
        return super()._float_weight().unsqueeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 3):
            raise AdderizeError(f"{type(self).__name__} expects [N, C, L] or [C, L], got {x.shape}")
        batched = x.dim() == 3
        y = super().forward((x if batched else x.unsqueeze(0)).unsqueeze(2)).squeeze(2)
        return y if batched else y.squeeze(0)


class LinearLike(nn.Linear, Blendable):
    """Base of the ``nn.Linear`` replacements: same signature and parameters; subclasses
    define ``op_forward``.

    Subclasses ``nn.Linear`` for its init and repr; the conversion pass and op counters
    check for these classes before ``nn.Linear``.
    """

    channel_dim = -1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_blend()

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._float_weight(), self.bias)

    forward = Blendable.forward

    @classmethod
    def from_float(cls: type[_L], mod: nn.Linear, **kwargs: Any) -> _L:
        """Build from an ``nn.Linear``, copying its weight and bias."""
        if not isinstance(mod, nn.Linear):
            raise AdderizeTypeError(
                f"{cls.__name__}.from_float expects an nn.Linear, got {type(mod)}"
            )
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


WEIGHT_STD_CLASSES = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")


def is_weight_std(mod: nn.Module) -> bool:
    """Whether ``mod`` is one of timm's weight-standardised convs."""
    import timm.layers as tl

    return isinstance(mod, tuple(getattr(tl, n) for n in WEIGHT_STD_CLASSES if hasattr(tl, n)))


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)  # type: ignore[operator]
        if getattr(src, "bias", None) is not None:
            dst.bias.copy_(src.bias)  # type: ignore[union-attr, operator]
    dst.train(src.training)
