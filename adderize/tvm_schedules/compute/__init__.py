"""TE compute definitions of the adder kernels: the one definition of each computation,
shared by the training kernels (:mod:`adderize.kernels.tvm_l1`), MetaSchedule tuning
(:mod:`adderize.tvm_schedules.tuning`) and whole-model compilation
(:mod:`adderize.deploy.model`). Pure ``te.compute``: no schedule here (the CPU
schedules are in :mod:`adderize.tvm_schedules.cpu`), as in TVM's topi.

* forward, ``out[m, t] = -sum_k |a[m, k] - b[t, k]|``, computed as written (sub, abs, add);
* l_p: ``|d|^p`` by :func:`pow_nonneg`, vectorisable float32 arithmetic;
* input gradient, ``g_a[m, k] = sum_t G[m, t] HardTanh(b[t, k] - a[m, k])``: with
  ``HardTanh(b - a) = clamp(b, a - 1, a + 1) - a`` it is
  ``sum_t G[m, t] clamp(b[t, k], a[m, k] - 1, a[m, k] + 1) - a[m, k] sum_t G[m, t]``:
  3 vector ops per MAC (max, min, fma).

A kernel is named by ``(kind, *shape)``: :func:`computes` maps it to its tensors.
TVM is imported inside the functions (``import adderize`` must not import it).
"""

from __future__ import annotations

from typing import Any

from adderize._errors import AdderizeError
from adderize.tvm_schedules.compute.common import out_size, pow_nonneg
from adderize.tvm_schedules.compute.dense import (
    FMA_FORMS,
    FORMS,
    conv_forward_compute,
    conv_grad_input_compute,
    l1_forward_compute,
    l1_grad_a_compute,
    one_position_backward_compute,
    one_position_forward_compute,
    pointwise_forward_nchw_compute,
    pointwise_grad_input_nchw_compute,
)
from adderize.tvm_schedules.compute.depthwise import (
    CHANNEL_BLOCK,
    depthwise_forward_compute,
    depthwise_forward_nchw_compute,
    depthwise_grad_input_compute,
    depthwise_grad_input_nchw_compute,
)
from adderize.tvm_schedules.compute.layout import transpose_compute
from adderize.tvm_schedules.compute.lowbit import (
    binary_conv_forward_compute,
    int8_conv_forward_compute,
)

#: the kernels with inner-loop forms besides "abs" (the p = 1 dense conv forwards)
FORM_KINDS = ("conv_forward", "conv_forward_nchw", "pointwise_forward_nchw")

__all__ = [
    "CHANNEL_BLOCK",
    "FMA_FORMS",
    "FORMS",
    "FORM_KINDS",
    "binary_conv_forward_compute",
    "computes",
    "conv_forward_compute",
    "conv_grad_input_compute",
    "depthwise_forward_compute",
    "depthwise_forward_nchw_compute",
    "depthwise_grad_input_compute",
    "depthwise_grad_input_nchw_compute",
    "int8_conv_forward_compute",
    "l1_forward_compute",
    "l1_grad_a_compute",
    "one_position_backward_compute",
    "one_position_forward_compute",
    "out_size",
    "pointwise_forward_nchw_compute",
    "pointwise_grad_input_nchw_compute",
    "pow_nonneg",
    "transpose_compute",
]


def computes(kind: str, *shape: int, form: str = "abs") -> list[Any]:
    """The compute definition (tensors) behind kernel ``kind`` (``form``: the p = 1 dense
    conv forward's inner loop, see :func:`conv_forward_compute`; the NCHW depthwise
    forward's vectorised axis, see :func:`depthwise_forward_nchw_compute`)."""
    lp = kind.endswith("_lp")
    base = kind.removesuffix("_lp")
    if base == "depthwise_forward_nchw":
        return depthwise_forward_nchw_compute(*shape, lp=lp, form=form)
    if kind == "pointwise_forward_nchw":
        return pointwise_forward_nchw_compute(*shape, form=form)
    if form != "abs":
        if kind not in FORM_KINDS:
            raise AdderizeError(f"only {FORM_KINDS} have the {form!r} form, not {kind!r}")
        return conv_forward_compute(*shape, form=form, nchw_out=kind == "conv_forward_nchw")
    if base == "conv_forward_nchw":
        return conv_forward_compute(*shape, lp=lp, nchw_out=True)
    if base in ("forward", "grad_a"):
        return (l1_forward_compute if base == "forward" else l1_grad_a_compute)(*shape)
    if base == "conv_mac_forward":
        return conv_forward_compute(*shape, mac=True)
    if base == "int8_conv_forward":
        return int8_conv_forward_compute(*shape)
    if base == "binary_conv_forward":
        return binary_conv_forward_compute(*shape)
    if base == "pointwise_grad_input_nchw":
        return pointwise_grad_input_nchw_compute(*shape)
    if base == "transpose":
        return transpose_compute(*shape)
    if base == "one_position_forward":
        return one_position_forward_compute(*shape)
    if base == "one_position_backward":
        return one_position_backward_compute(*shape)
    fn = {
        "conv_forward": conv_forward_compute,
        "conv_grad_input": conv_grad_input_compute,
        "depthwise_forward": depthwise_forward_compute,
        "depthwise_grad_input": depthwise_grad_input_compute,
        "depthwise_grad_input_nchw": depthwise_grad_input_nchw_compute,
    }[base]
    return fn(*shape, lp=lp)
