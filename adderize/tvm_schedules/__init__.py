"""Whole-model deployment through TVM Relax.

``compile_model`` exports a converted model with ``torch.export``, imports it into Relax
(``from_exported_program``) with every adder layer mapped to the adderize kernel (a
``call_tir`` of the same ``te.compute`` definitions and schedules the training kernels use,
MetaSchedule-tuned when the tuning database has them), lets TVM lower everything else, and
builds a shared library that :class:`CompiledModel` loads and runs in the Relax VM.

Modules: ``compute`` (the TE compute definitions), ``cpu`` (CPU schedules and the candidate
tiles measured at first use), ``int8`` (the int8 adder schedule and its byte-SAD
intrinsic), ``tuning`` (MetaSchedule), ``cuda``, ``model`` (Relax),
``quant`` (int8 and binary layers). The build and cache of kernels for training live in
:mod:`adderize.kernels.tvm_build`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CompileReport", "CompiledModel", "compile_model"]


def __getattr__(name: str) -> Any:
    # lazy: the kernel builder imports this package's compute and schedule modules
    if name in __all__:
        from adderize.tvm_schedules import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
