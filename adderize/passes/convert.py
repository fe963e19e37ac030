"""The conversion pass: ``adderize(model)``.

requires -> call -> ensures, as ``torch.fx.passes.infra``:

1. requires: ``model`` is an ``nn.Module`` with at least one convertible layer, and every
   entry of the mapping (name, regex, type) matches something in it;
2. call: analyse the graph (:mod:`adderize.passes.trace`), plan one decision per layer,
   then swap modules (on a copy unless ``inplace=True``), insert BatchNorm after adder
   layers with no normalisation after them, and rewrite functional calls on parameters
   (the only case that returns a ``torch.fx.GraphModule`` instead of the model's class);
3. ensures: every layer is in the :class:`RewriteReport`; with ``strict=True`` a layer the
   mapping asked to convert but that could not be is an error, raised before any change.
"""

from __future__ import annotations

import copy
import difflib
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, overload

from torch import fx, nn

from adderize._errors import AdderizeError, AdderizeTypeError
from adderize.nn import BatchNormLastDim, Blendable, Conv2dLike, LinearLike, WithNorm
from adderize.passes.mapping import OpMapping
from adderize.passes.registry import OpConfig, get_op
from adderize.passes.report import LayerRecord, RewriteReport
from adderize.passes.sources import Source, classify
from adderize.passes.trace import FunctionalSite, GraphFacts, Tracer, analyse

__all__ = ["adderize"]

META_ATTR = "adderize_ops"  # the mapping a converted model was made with (plain dict)
# {layer: op config} of the layers whose parameters the build took from their weights (a
# shift layer's exponent range): saved beside the mapping, so that load rebuilds them
RESOLVED_ATTR = "adderize_resolved"
# preserve: {blended layer: the BatchNorm after it}, read by adderize.train.anneal
BLEND_ATTR = "adderize_blend"


@dataclass
class _Decision:
    name: str
    original: str
    op: str  # op to build; "conv" keeps the layer
    requested: str  # op the mapping asked for
    reason: str
    action: Literal["replaced", "kept", "skipped"]
    needs_norm: bool = False
    norm_after: str = ""  # the model's BatchNorm that alone reads this layer's output
    source: Source | None = None
    site: FunctionalSite | None = None
    config: OpConfig | None = None  # the op's per-layer parameters (None: its defaults)


def _resolved(op: str, layer: nn.Module, config: OpConfig | None) -> OpConfig | None:
    """The op's parameters as the built ``layer`` resolved them (a shift layer's exponent
    range from its weights), where they differ from those asked for; saved by name beside
    the model's mapping (:data:`RESOLVED_ATTR`), so that :func:`adderize.load` rebuilds
    the same layer from other weights."""
    spec = get_op(op)
    if spec.params is None:
        return None
    asked = config.params if config is not None and config.params is not None else spec.params()
    got = replace(asked, **{f.name: getattr(layer, f.name) for f in fields(asked)})
    return None if got == asked else OpConfig(op, got)


def _end_layers(
    model: nn.Module, facts: GraphFacts, names: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """``{name: why}`` of the first and last layers: timm's pretrained_cfg, else the graph."""
    cfg = getattr(model, "pretrained_cfg", None) or {}

    def pick(key: str, by_graph: list[str], label: str) -> dict[str, str]:
        wanted = cfg.get(key)
        wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
        hits = {
            n: f"{label} layer (pretrained_cfg[{key!r}] = {w!r})"
            for w in wanted
            for n in sorted(names)
            if n == w or n.startswith(w + ".")
        }
        return hits or {n: f"{label} layer (graph position)" for n in by_graph if n in names}

    return pick("first_conv", facts.first, "first"), pick("classifier", facts.last, "last")


def _validate(mapping: OpMapping, layers: dict[str, type]) -> None:
    names = sorted(layers)
    for name in mapping.names:
        if name not in layers:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise AdderizeError(
                f"mapping names layer {name!r}, which is not a conv/linear layer of the model"
                f"{hint} (layers: {names[:6]}{' ...' if len(names) > 6 else ''})"
            )
    for pattern in mapping.regex:
        if not any(re.fullmatch(pattern, n) for n in names):
            raise AdderizeError(
                f"regex {pattern!r} matches no conv/linear layer of the model (matched with "
                f"re.fullmatch against names such as {names[:4]})"
            )
    classes = set(layers.values())
    for key in mapping.types:
        if not any(mapping.type_matches(key, c) for c in classes):
            present = sorted({c.__name__ for c in classes})
            raise AdderizeError(
                f"type {key!r} matches no layer of the model; types present: {present}"
            )


def _plan(model: nn.Module, mapping: OpMapping, facts: GraphFacts) -> list[_Decision]:
    modules = dict(model.named_modules())
    sources = {n: classify(m) for n, m in modules.items() if n}
    layer_names = [n for n in facts.order if n in sources]
    layer_names += [n for n, s in sources.items() if s is not None and n not in layer_names]
    sites = {s.name: s for s in facts.functional}
    convertible = [n for n in layer_names if sources[n].kind] + [
        n for n, s in sites.items() if not s.reason
    ]
    if not convertible:
        raise AdderizeError(
            f"{type(model).__name__} has no nn.Conv2d / nn.Linear layer (or functional call "
            "on parameters) that adderize can convert"
        )
    classes: dict[str, type] = {n: type(modules[n]) for n in layer_names}
    classes |= {n: nn.Conv2d if s.kind == "conv2d" else nn.Linear for n, s in sites.items()}
    _validate(mapping, classes)
    first, last = _end_layers(model, facts, set(classes))

    decisions = []
    for name, cls in classes.items():
        site = sites.get(name)
        module = modules.get(name) if site is None else None
        source = (
            sources.get(name)
            if site is None
            else Source(None if site.reason else site.kind, site.reason)
        )
        assert source is not None  # every name comes from sources or sites
        original = f"F.{site.kind}" if site else cls.__name__
        config, rule = mapping.resolve(name, cls)
        op, reason = config.op, f"mapping {rule} -> {config}"
        if not rule.startswith("name"):
            for ends, keep in ((first, mapping.keep_first), (last, mapping.keep_last)):
                if keep and name in ends:
                    op, reason = "conv", f"{ends[name]}: kept full precision"
        spec = get_op(op)
        d = _Decision(
            name, original, op, op, reason, "replaced", source=source, site=site, config=config
        )
        if isinstance(module, (Conv2dLike, LinearLike)):
            d.action, d.op, d.requested, d.reason = "kept", "conv", "", source.reason
        elif source.kind is None:
            d.action, d.reason = "skipped", source.reason
            d.requested = "" if spec.keeps_float else op
        elif name in facts.uncalled and site is None:  # a module used only functionally
            d.action, d.reason = "skipped", facts.uncalled[name]
            d.requested = "" if spec.keeps_float else op
        elif spec.keeps_float:
            d.action = "kept"
        elif spec.builder(source.kind) is None:
            d.action, d.reason = "skipped", f"op {op!r} has no {source.kind} layer"
        elif mapping.preserve:  # every converted layer gets a BatchNorm to fold into
            d.norm_after = "" if site else facts.batchnorm_after.get(name, "")
            d.needs_norm = not d.norm_after
        else:
            followed = site.followed_by_norm if site else facts.followed_by_norm.get(name, False)
            d.needs_norm = spec.needs_norm and mapping.insert_norm and not followed
        decisions.append(d)
    for name, reason in facts.custom.items():
        decisions.append(_Decision(name, "-", "conv", "", reason, "skipped"))
    return decisions


def _norm_for(kind: str, channels: int, ref: nn.Module, identity: bool) -> nn.Module:
    """The BatchNorm inserted after a converted layer; ``identity``: one that passes its
    input through unchanged in eval mode (function-preserving conversion)."""
    weight = next(ref.parameters())
    cls = {"conv2d": nn.BatchNorm2d, "conv1d": nn.BatchNorm1d}.get(kind, BatchNormLastDim)
    norm = cls(channels, device=weight.device, dtype=weight.dtype)
    if identity:
        norm.running_var.fill_(1.0 - norm.eps)  # type: ignore[union-attr]
    norm.train(ref.training)
    return norm


def _functional_float(root: nn.Module, site: FunctionalSite) -> nn.Module:
    """The nn.Conv2d / nn.Linear equivalent of a functional call, sharing its tensors."""
    weight = root.get_parameter(site.weight)
    bias = root.get_parameter(site.bias) if site.bias else None
    if site.kind == "linear":
        mod: nn.Module = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, device="meta"
        )
    else:
        kw = site.kwargs
        groups = int(kw.get("groups", 1))
        mod = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=kw.get("stride", 1),
            padding=kw.get("padding", 0),
            dilation=kw.get("dilation", 1),
            groups=groups,
            bias=bias is not None,
            device="meta",
        )
    mod.weight = weight
    if bias is not None:
        mod.bias = bias
    return mod


def _rewrite_functional(root: nn.Module, steps: list[tuple[_Decision, nn.Module]]) -> nn.Module:
    graph = Tracer().trace(root)
    gm = fx.GraphModule(root, graph, class_name=f"Adderized{type(root).__name__}")
    nodes = {n.name: n for n in gm.graph.nodes}
    for d, new in steps:
        assert d.site is not None
        node = nodes[d.site.node]
        target = f"{d.name}_{d.op}"
        gm.add_submodule(target, new)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(target, (node.args[0],))
            if d.site.bias_node:  # the bias the model computes at run time, added after
                call = gm.graph.call_function(operator.add, (call, nodes[d.site.bias_node]))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for d, _ in steps:
        for pname in (d.site.weight, d.site.bias):  # type: ignore[union-attr]
            if pname and pname not in used:
                owner, _, attr = pname.rpartition(".")
                delattr(gm.get_submodule(owner) if owner else gm, attr)
    gm.recompile()
    return gm


@overload
def adderize(
    model: nn.Module,
    ops: OpMapping | str | dict[str, Any] | None = ...,
    *,
    keep: Iterable[str] = ...,
    strict: bool = ...,
    inplace: bool = ...,
    preserve: bool | None = ...,
    return_report: Literal[False] = ...,
) -> nn.Module: ...
@overload
def adderize(
    model: nn.Module,
    ops: OpMapping | str | dict[str, Any] | None = ...,
    *,
    keep: Iterable[str] = ...,
    strict: bool = ...,
    inplace: bool = ...,
    preserve: bool | None = ...,
    return_report: Literal[True],
) -> tuple[nn.Module, RewriteReport]: ...
def adderize(
    model: nn.Module,
    ops: OpMapping | str | dict[str, Any] | None = None,
    *,
    keep: Iterable[str] = (),
    strict: bool = False,
    inplace: bool = False,
    preserve: bool | None = None,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, RewriteReport]:
    """Replace the Conv2d / Linear layers of ``model`` with multiplication-free layers.

    Args:
        model: any ``nn.Module``; timm models are traced with timm's fx leaf rules.
        ops: an :class:`OpMapping`, an op name for every layer (``"adder"``, ``"binary"``,
            ``"shift"``, ``"conv"``), a dict (as ``OpMapping.to_dict()``) or None (adder).
        keep: module names to keep as they are (full precision).
        strict: raise if a layer the mapping asked to convert cannot be converted.
        inplace: modify ``model`` itself instead of a deep copy.
        preserve: function-preserving conversion (overrides ``ops.preserve``): the result
            computes exactly what ``model`` computes (in eval mode) until an anneal
            (:class:`adderize.train.anneal.Anneal`) moves every converted layer to its op.
        return_report: also return the :class:`RewriteReport`.

    Returns:
        The converted model (of the model's own class, or a ``torch.fx.GraphModule`` when
        functional calls had to be rewritten), and the report if ``return_report``.
    """
    if not isinstance(model, nn.Module):
        raise AdderizeTypeError(f"adderize expects a torch.nn.Module, got {type(model).__name__}")
    mapping = OpMapping.coerce(ops)
    if preserve is not None and preserve != mapping.preserve:
        mapping = replace(mapping, preserve=bool(preserve))
        mapping.__post_init__()
    keep = [keep] if isinstance(keep, str) else list(keep)
    if keep:
        mapping = mapping.with_names(dict.fromkeys(keep, "conv"))
    facts = analyse(model)
    decisions = _plan(model, mapping, facts)
    report = RewriteReport(tracing=facts.mode, note=facts.note)
    unmet = [d for d in decisions if d.action == "skipped" and d.requested]
    if strict and unmet:
        lines = "\n".join(f"  {d.name} ({d.original}): {d.reason}" for d in unmet)
        raise AdderizeError(f"strict=True: {len(unmet)} layer(s) could not be converted:\n{lines}")

    root = model if inplace else copy.deepcopy(model)
    swaps: list[tuple[_Decision, nn.Module]] = []
    blend: dict[str, str] = {}  # converted layer -> the BatchNorm after it (preserve)
    resolved: dict[str, OpConfig] = {}  # parameters a layer took from its weights
    for d in decisions:
        new_type, norm = d.original, None
        if d.action == "replaced":
            assert d.source is not None
            src = _functional_float(root, d.site) if d.site else root.get_submodule(d.name)
            new = get_op(d.op).build(src, d.source, d.config)
            new_type = type(new).__name__
            fixed = _resolved(d.op, new, d.config)
            if fixed is not None and not d.site:
                resolved[d.name] = fixed
            path = f"{d.name}_{d.op}" if d.site else d.name
            if mapping.preserve and isinstance(new, Blendable):
                new.blend = 1.0
                blend[f"{path}.op" if d.needs_norm else path] = d.norm_after or f"{path}.norm"
            if d.needs_norm:
                linear = d.source.kind == "linear"
                channels = new.out_features if linear else new.out_channels
                norm = _norm_for(d.source.kind or "", channels, new, mapping.preserve)
                new = WithNorm(new, norm)
            swaps.append((d, new))
        report.records.append(
            LayerRecord(d.name, d.original, d.action, new_type, d.reason, d.requested)
        )
        if norm is not None:
            report.records.append(
                LayerRecord(
                    f"{d.name}.norm",
                    "-",
                    "inserted",
                    type(norm).__name__,
                    f"no normalisation follows this {d.op} layer (the papers need BN after it)",
                )
            )
    functional = [(d, new) for d, new in swaps if d.site]
    if functional:  # rewrite the graph first: module swaps below keep the module paths
        root = _rewrite_functional(root, functional)
        report.result_type = (
            f"torch.fx.GraphModule (functional calls rewritten; {type(model).__name__}'s own "
            "methods are not available)"
        )
    else:
        report.result_type = type(model).__name__
    for d, new in swaps:
        if not d.site:
            root.set_submodule(d.name, new)
    setattr(root, META_ATTR, mapping.to_dict())
    if resolved:
        setattr(root, RESOLVED_ATTR, {n: c.to_data() for n, c in resolved.items()})
    if blend:
        setattr(root, BLEND_ATTR, blend)
    return (root, report) if return_report else root
