"""Whole-model deployment through TVM Relax.

``compile_model`` exports a converted model with ``torch.export``, imports it into Relax
(``from_exported_program``) with every adder layer mapped to the adderize kernel (a
``call_tir`` of the same ``te.compute`` definitions and schedules the training kernels use,
MetaSchedule-tuned when the tuning database has them), lets TVM lower everything else, and
builds a shared library that :class:`CompiledModel` loads and runs in the Relax VM.

The compute definitions, hand schedules and tuning live in :mod:`adderize.kernels.tvm_l1`.
"""

from adderize.tvm_schedules.model import CompiledModel, CompileReport, compile_model

__all__ = ["CompileReport", "CompiledModel", "compile_model"]
