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

A kernel is a :class:`~adderize.tvm_schedules.kinds.Workload`; the table of kinds
(:mod:`adderize.tvm_schedules.kinds`) maps it to its compute here. TVM is imported inside
the functions (``import adderize`` must not import it).
"""

from __future__ import annotations

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

__all__ = [
    "CHANNEL_BLOCK",
    "FMA_FORMS",
    "FORMS",
    "binary_conv_forward_compute",
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
