"""Multiplication-free drop-in layers for ``nn.Conv2d`` / ``nn.Linear``."""

from adderize.nn._base import Conv1dLike, Conv2dLike, LinearLike, is_weight_std
from adderize.nn._blend import Blendable
from adderize.nn.adder import Adder1d, Adder2d, AdderLinear, adder2d, adder_linear, check_p
from adderize.nn.binary import BinaryConv1d, BinaryConv2d, BinaryLinear
from adderize.nn.norm import BatchNormLastDim, WithNorm
from adderize.nn.shift import ShiftConv1d, ShiftConv2d, ShiftLinear, check_exponents

__all__ = [
    "Adder1d",
    "Adder2d",
    "AdderLinear",
    "BatchNormLastDim",
    "BinaryConv1d",
    "BinaryConv2d",
    "BinaryLinear",
    "Blendable",
    "Conv1dLike",
    "Conv2dLike",
    "LinearLike",
    "ShiftConv1d",
    "ShiftConv2d",
    "ShiftLinear",
    "WithNorm",
    "adder2d",
    "adder_linear",
    "check_exponents",
    "check_p",
    "is_weight_std",
]
