"""Whole-model deployment through TVM Relax.

``compile_model`` exports a converted model with ``torch.export``, imports it into Relax
(``from_exported_program``) with every adder layer mapped to the adderize kernel (a
``call_tir`` of the same ``te.compute`` definitions and schedules the training kernels use,
MetaSchedule-tuned when the tuning database has them), lets TVM lower everything else, and
builds a shared library that :class:`CompiledModel` loads and runs in the Relax VM.

Modules: ``export`` (the adder layers as ``torch.library`` ops for ``torch.export``),
``quant`` (int8 and binary layers and the int8 model pass), ``relax_ops`` (each adderize
layer as its kernel in Relax, and the compile report), ``model`` (the Relax import, build
and runtime). Reads :mod:`adderize.tvm_schedules`, which never imports this.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CompileReport", "CompiledModel", "compile_model"]


def __getattr__(name: str) -> Any:
    # lazy: importing the model module imports torch.export machinery and the kernels
    if name in __all__:
        from adderize.deploy import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
