"""DeepShift-style power-of-two layers (Elhoushi et al., "DeepShift", CVPRW 2021).

Weights are rounded to ``sign(W) * 2^round(log2|W|)``, the exponent clamped to
``[min_exp, max_exp]``, so every multiplication becomes a bit shift (and a sign flip). Exact
zeros stay zero. The latent float weight gets a straight-through gradient (DeepShift-Q's
training). Activations stay full precision.

The exponent range is a parameter of every shift layer (``min_exp``, ``max_exp``). The
default ``[-14, 0]`` is DeepShift-PS's (``shift_range``: 5 bits with the sign, one exponent
code reserved); DeepShift-Q's own rounding clamps at ``-15`` (:data:`DEEPSHIFT_Q`), so to
reproduce DeepShift-Q pass ``min_exp=-15`` (or set ``layer.min_exp`` on a converted model:
the range is a layer attribute, not a tensor, and is not saved with the weights). The two
differ only for weights below ``2^-14.5``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from adderize._errors import AdderizeError
from adderize.nn._base import Conv1dLike, Conv2dLike, LinearLike

__all__ = [
    "DEEPSHIFT_PS",
    "DEEPSHIFT_Q",
    "ShiftConv1d",
    "ShiftConv2d",
    "ShiftLinear",
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


def check_exponents(min_exp: int, max_exp: int) -> tuple[int, int]:
    if int(min_exp) > int(max_exp):
        raise AdderizeError(f"min_exp must be <= max_exp, got min_exp={min_exp}, max_exp={max_exp}")
    return int(min_exp), int(max_exp)


class ShiftConv2d(Conv2dLike):
    """Drop-in for ``nn.Conv2d`` with power-of-two (bit-shift) weights."""

    def __init__(self, *args: Any, min_exp: int = -14, max_exp: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_exp, self.max_exp = check_exponents(min_exp, max_exp)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.transformed_weight(round_power_of_two, self.min_exp, self.max_exp)
        return F.conv2d(self.pad_input(x), w, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift_range=[{self.min_exp}, {self.max_exp}]"


class ShiftConv1d(Conv1dLike, ShiftConv2d):
    """Drop-in for ``nn.Conv1d``: :class:`ShiftConv2d` over ``[N, C, 1, L]``."""


class ShiftLinear(LinearLike):
    """Drop-in for ``nn.Linear`` with power-of-two (bit-shift) weights."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        min_exp: int = -14,
        max_exp: int = 0,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.min_exp, self.max_exp = check_exponents(min_exp, max_exp)

    def op_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.transformed_weight(round_power_of_two, self.min_exp, self.max_exp)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shift_range=[{self.min_exp}, {self.max_exp}]"
