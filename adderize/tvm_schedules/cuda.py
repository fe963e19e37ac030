"""The adder computes built for CUDA with TVM's default GPU schedule (compiles without a GPU)."""

from __future__ import annotations

from typing import Any

from adderize.tvm_schedules.compute import l1_forward_compute, l1_grad_a_compute

__all__ = ["cuda_executable"]


def cuda_executable(kind: str, m: int, t: int, k: int, arch: str = "sm_80") -> Any:
    """The same compute built for CUDA (``arch`` sm_80 / sm_90, ...) with TVM's default GPU
    schedule; compiles without a GPU. Returns the TVM Executable."""
    import tvm
    from tvm import te
    from tvm.s_tir import dlight

    tensors = (l1_forward_compute if kind == "forward" else l1_grad_a_compute)(m, t, k)
    mod = tvm.IRModule({"main": te.create_prim_func(tensors)})
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    with target:
        mod = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(mod)
    return tvm.compile(mod, target=target)
