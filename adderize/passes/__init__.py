"""The conversion pass and its parts: tracing, op mapping, op registry, report."""

from adderize.passes.convert import adderize
from adderize.passes.mapping import OpMapping
from adderize.passes.registry import (
    AdderParams,
    OpConfig,
    OpSpec,
    ShiftParams,
    get_op,
    op_names,
    register_op,
    registered,
)
from adderize.passes.report import LayerRecord, RewriteReport
from adderize.passes.sources import Source, classify
from adderize.passes.trace import GraphFacts, analyse

__all__ = [
    "AdderParams",
    "GraphFacts",
    "LayerRecord",
    "OpConfig",
    "OpMapping",
    "OpSpec",
    "RewriteReport",
    "ShiftParams",
    "Source",
    "adderize",
    "analyse",
    "classify",
    "get_op",
    "op_names",
    "register_op",
    "registered",
]
