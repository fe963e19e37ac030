"""The conversion pass and its parts: tracing, op mapping, op registry, report."""

from adderize.passes.convert import adderize
from adderize.passes.mapping import OpMapping
from adderize.passes.registry import OpSpec, Source, classify, get_op, op_names, register_op
from adderize.passes.report import LayerRecord, RewriteReport
from adderize.passes.trace import GraphFacts, analyse

__all__ = [
    "GraphFacts",
    "LayerRecord",
    "OpMapping",
    "OpSpec",
    "RewriteReport",
    "Source",
    "adderize",
    "analyse",
    "classify",
    "get_op",
    "op_names",
    "register_op",
]
