"""DeepShift-style power-of-two layers (Elhoushi et al., "DeepShift", CVPRW 2021).

Weights are rounded to ``sign(W) * 2^round(log2|W|)``, the exponent clamped to
``[min_exp, max_exp]``, so every multiplication becomes a bit shift (and a sign flip). Exact
zeros stay zero. The latent float weight gets a straight-through gradient (DeepShift-Q's
training). Activations stay full precision.

The exponent range is a parameter of every shift layer (``min_exp``, ``max_exp``): 15
exponents, DeepShift-PS's 5-bit code with the sign (``shift_range``, one code reserved).
By default a converted layer takes the range from the weights it converts
(:func:`exponent_range`): the window tops at the exponent of its largest weight, and at
least at 0, so DeepShift-PS's ``[-14, 0]`` for weights below 1 but ``[-12, 2]`` for a
pretrained depthwise conv with weights up to 3.7, which ``[-14, 0]`` would clamp to 1:
those are few (0.1% in EfficientNet-Lite0) and the largest, most important ones. An
explicit bound is kept as given, with a warning when it clamps weights. DeepShift-Q's own
rounding clamps at ``-15`` (:data:`DEEPSHIFT_Q`): pass ``min_exp=-15, max_exp=0`` to
reproduce it. The range is a layer attribute, not a tensor: the conversion records every
layer's resolved range in the op mapping a saved model is rebuilt from.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from adderize._errors import AdderizeError
from adderize.nn._base import Conv1dLike, Conv2dLike, LinearLike

_log = logging.getLogger(__name__)

__all__ = [
    "DEEPSHIFT_PS",
    "DEEPSHIFT_Q",
    "EXPONENTS",
    "ShiftConv1d",
    "ShiftConv2d",
    "ShiftLinear",
    "check_exponents",
    "exponent_range",
    "round_power_of_two",
]

#: ``(min_exp, max_exp)`` of DeepShift-PS (the default) and of DeepShift-Q
DEEPSHIFT_PS = (-14, 0)
DEEPSHIFT_Q = (-15, 0)


def round_power_of_two(w: torch.Tensor, min_exp: int = -14, max_exp: int = 0) -> torch.Tensor:
    """``sign(w) * 2^clamp(round(log2|w|), min_exp, max_exp)`` with a straight-through gradient."""
    wd = w.detach()
    exp = torch.log2(wd.abs().clamp_min(2.0 ** (min_exp - 1))).round_().clamp_(min_exp, max_exp)
    q = torch.sign(wd) * torch.exp2(exp)
    return w + (q - w).detach()


#: how many exponents a shift weight's code holds (DeepShift-PS: 5 bits with the sign)
EXPONENTS = 15


def check_exponents(min_exp: int | None, max_exp: int | None) -> None:
    """ValueError unless each bound is None (from the weights) or an int, ``min <= max``."""
    for name, v in (("min_exp", min_exp), ("max_exp", max_exp)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise AdderizeError(f"{name} must be an integer or None (from the weights), got {v!r}")
    if min_exp is not None and max_exp is not None and min_exp > max_exp:
        raise AdderizeError(f"min_exp must be <= max_exp, got min_exp={min_exp}, max_exp={max_exp}")


def exponent_range(
    w: torch.Tensor, min_exp: int | None = None, max_exp: int | None = None
) -> tuple[int, int]:
    """The exponent range of a shift layer with weights ``w``: the bounds given, an unset
    ``max_exp`` the rounded exponent of the largest ``|w|`` (at least 0), an unset
    ``min_exp`` ``EXPONENTS - 1`` below ``max_exp``. Warns when a given ``max_exp`` clamps."""
    check_exponents(min_exp, max_exp)
    top = int(torch.log2(w.detach().abs().max().clamp_min(2.0**-30)).round())
    if max_exp is None:
        max_exp = max(0, top, min_exp if min_exp is not None else 0)
    elif top > max_exp:
        n = int((w.detach().abs() > 2.0 ** (max_exp + 0.5)).sum())
        _log.warning(
            "max_exp=%d clamps %d weight(s) of up to %.3g to %g (leave max_exp unset to take "
            "the range from the weights)",
            max_exp,
            n,
            float(w.abs().max()),
            2.0**max_exp,
        )
    if min_exp is None:
        min_exp = max_exp - EXPONENTS + 1
    check_exponents(min_exp, max_exp)
    return min_exp, max_exp


class _ShiftRange:
    """The exponent range of a shift layer, resolved from its weights where unset."""

    weight: torch.Tensor

    def _set_range(self, min_exp: int | None, max_exp: int | None) -> None:
        self.min_exp, self.max_exp = exponent_range(self.weight, min_exp, max_exp)

    @classmethod
    def from_float(
        cls, mod: Any, *, min_exp: int | None = None, max_exp: int | None = None, **kwargs: Any
    ) -> Any:
        """Build from the float layer; an unset bound is taken from its weights."""
        new = super().from_float(mod, **kwargs)  # type: ignore[misc]
        new._set_range(min_exp, max_exp)
        return new


class ShiftConv2d(_ShiftRange, Conv2dLike):
    """Drop-in for ``nn.Conv2d`` with power-of-two (bit-shift) weights."""

    def __init__(
        self, *args: Any, min_exp: int | None = None, max_exp: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._set_range(min_exp, max_exp)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.transformed_weight(round_power_of_two, self.min_exp, self.max_exp)
        return F.conv2d(self.pad_input(x), w, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift_range=[{self.min_exp}, {self.max_exp}]"


class ShiftConv1d(Conv1dLike, ShiftConv2d):
    """Drop-in for ``nn.Conv1d``: :class:`ShiftConv2d` over ``[N, C, 1, L]``."""


class ShiftLinear(_ShiftRange, LinearLike):
    """Drop-in for ``nn.Linear`` with power-of-two (bit-shift) weights."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        min_exp: int | None = None,
        max_exp: int | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._set_range(min_exp, max_exp)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.transformed_weight(round_power_of_two, self.min_exp, self.max_exp)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift_range=[{self.min_exp}, {self.max_exp}]"
