"""Multiplication-free drop-in layers for ``nn.Conv2d`` / ``nn.Linear``."""

from adderize.nn._base import Blendable, Conv2dLike, LinearLike
from adderize.nn.adder import Adder2d, AdderLinear, adder2d, adder_linear
from adderize.nn.binary import BinaryConv2d, BinaryLinear
from adderize.nn.norm import BatchNormLastDim, WithNorm
from adderize.nn.shift import ShiftConv2d, ShiftLinear

__all__ = [
    "Adder2d",
    "AdderLinear",
    "BatchNormLastDim",
    "BinaryConv2d",
    "BinaryLinear",
    "Blendable",
    "Conv2dLike",
    "LinearLike",
    "ShiftConv2d",
    "ShiftLinear",
    "WithNorm",
    "adder2d",
    "adder_linear",
]
