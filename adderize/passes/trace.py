"""Graph analysis for the conversion pass: timm-aware torch.fx tracing, module-walk fallback.

The pass swaps modules; the graph tells it what a module walk cannot:

* which layers actually run as modules (``MultiheadAttention.out_proj``, for one, is never
  called: its parent uses the weight directly, so swapping it would silently do nothing);
* the first and last layers by graph position (no parametric layer before / after them);
* whether a normalisation follows each layer (through reshapes and permutes);
* functional ``F.conv2d`` / ``F.linear`` calls on parameters, which only a graph rewrite
  can convert.

When fx cannot trace the model, :func:`analyse` falls back to the module tree and says so;
modules that timm marks as not traceable are analysed on their own, recursively.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from adderize._errors import brief
from adderize.passes.sources import Kind, classify

__all__ = ["FunctionalSite", "GraphFacts", "Tracer", "analyse", "is_norm"]

_CONV_FNS = {F.conv2d, torch.conv2d}
_LINEAR_FNS = {F.linear, torch._C._nn.linear}
_NORM_FNS = {F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm}
_SHAPE_METHODS = {
    "permute",
    "reshape",
    "view",
    "flatten",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
}
_SHAPE_FNS = {
    torch.permute,
    torch.reshape,
    torch.flatten,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    operator.getitem,
}


def is_norm(module: nn.Module) -> bool:
    """BatchNorm/GroupNorm/LayerNorm and their timm relatives (BatchNormAct2d, LayerNorm2d,
    FrozenBatchNorm2d, EvoNorm, RmsNorm, ...)."""
    torch_norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return isinstance(module, torch_norms) or "Norm" in type(module).__name__


@dataclass(frozen=True)
class FunctionalSite:
    """A functional ``F.conv2d`` / ``F.linear`` call found in the graph."""

    node: str
    kind: Kind
    weight: str  # qualified name of the weight parameter; "" when computed at run time
    bias: str | None
    kwargs: dict[str, Any]
    reason: str  # why it cannot be converted; "" when it can
    followed_by_norm: bool = False
    # a linear bias computed at run time (BEiT / EVA / SwinV2 qkv: cat(q_bias, 0, v_bias)):
    # the graph node that computes it, added after the converted layer
    bias_node: str = ""

    @property
    def name(self) -> str:
        """Name used in mappings and reports: the weight's owner path, else the node name."""
        if self.weight.endswith(".weight"):
            return self.weight[: -len(".weight")]
        return self.weight or self.node


@dataclass
class GraphFacts:
    """What the graph (or the module tree) says about the model's layers."""

    mode: Literal["fx", "module-walk"]
    note: str = ""
    order: list[str] = field(default_factory=list)
    uncalled: dict[str, str] = field(default_factory=dict)
    followed_by_norm: dict[str, bool] = field(default_factory=dict)
    # layer -> the BatchNorm module that alone reads its output ("" when none, or when the
    # layer is called more than once)
    batchnorm_after: dict[str, str] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)
    last: list[str] = field(default_factory=list)
    functional: list[FunctionalSite] = field(default_factory=list)
    custom: dict[str, str] = field(default_factory=dict)
    graph: fx.Graph | None = None


class Tracer(fx.Tracer):
    """fx tracer with timm's leaf modules/functions; every conv/linear-like layer is a leaf."""

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaf_types = tuple(get_notrace_modules())

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """Trace ``root`` as ``root(x)`` runs: optional forward arguments keep their defaults
        (Hiera's ``forward(x, mask=None)`` skips its head when ``mask`` is a proxy)."""
        if concrete_args is None and isinstance(root, nn.Module):
            params = list(inspect.signature(root.forward).parameters.values())[1:]
            kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            concrete_args = {
                p.name: p.default
                for p in params
                if p.default is not inspect.Parameter.empty and p.kind in kinds
            } or None
        return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if classify(m) is not None or isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and classify(m) is not None}


def _custom_reason(module: nn.Module) -> str | None:
    """A layer with its own matrix/kernel weights that is not a conv or linear layer."""
    if classify(module) is not None or is_norm(module):
        return None
    if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
        return (
            f"{type(module).__name__} is a custom layer with its own weights (not nn.Conv2d / "
            "nn.Linear); not converted"
        )
    return None


def _next_sibling_is_norm(model: nn.Module, name: str) -> bool:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = list(parent._modules)
    i = names.index(child)
    nxt = parent._modules[names[i + 1]] if i + 1 < len(names) else None
    return nxt is not None and is_norm(nxt)


def _module_walk(model: nn.Module, note: str) -> GraphFacts:
    facts = GraphFacts(mode="module-walk", note=note)
    facts.order = list(_candidates(model))
    facts.followed_by_norm = {n: _next_sibling_is_norm(model, n) for n in facts.order}
    if facts.order:
        facts.first, facts.last = [facts.order[0]], [facts.order[-1]]
    for n, m in model.named_modules():
        reason = _custom_reason(m)
        if n and reason:
            facts.custom[n] = reason
    return facts


def _next_norm(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The normalisation node that alone consumes ``node``'s output (through reshapes)."""
    while len(node.users) == 1:
        (user,) = node.users
        if user.op == "call_module" and is_norm(modules[str(user.target)]):
            return user
        if user.op == "call_function" and user.target in _NORM_FNS:
            return user
        shape_op = (user.op == "call_method" and user.target in _SHAPE_METHODS) or (
            user.op == "call_function" and user.target in _SHAPE_FNS
        )
        if not shape_op:
            return None
        node = user
    return None


def _followed_by_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return _next_norm(node, modules) is not None


def _batchnorm_after(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The BatchNorm module (by name) that alone consumes ``node``'s output, if any."""
    norm = _next_norm(node, modules)
    if norm is None or norm.op != "call_module":
        return None
    is_bn = isinstance(modules[str(norm.target)], nn.modules.batchnorm._BatchNorm)
    return str(norm.target) if is_bn else None


def _functional_site(node: fx.Node, root: nn.Module, followed: bool) -> FunctionalSite:
    kind: Kind = "conv2d" if node.target in _CONV_FNS else "linear"
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    bound = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    weight, bias = bound.get("weight"), bound.get("bias")
    kwargs = {k: bound[k] for k in names[3:] if k in bound}

    def param_name(arg: Any) -> tuple[str, str]:
        if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            return "", "weight computed at run time (e.g. standardised or dynamic weights)"
        target = str(arg.target)
        owner, _, attr = target.rpartition(".")
        obj = getattr(root.get_submodule(owner) if owner else root, attr)
        if not isinstance(obj, nn.Parameter):
            return target, f"{target} is a fixed buffer (e.g. a blur filter), not a trained weight"
        return target, ""

    w_name, reason = param_name(weight)
    b_name, bias_node = None, ""
    computed = isinstance(bias, fx.Node) and bias.op != "get_attr"
    if computed and kind == "linear" and not reason:
        bias_node = bias.name  # type: ignore[union-attr]
    elif bias is not None:
        b_name, b_reason = param_name(bias)
        if computed:
            b_reason = "bias computed at run time for a functional conv"
        reason = reason or b_reason
    if not reason and any(isinstance(v, fx.Node) for v in kwargs.values()):
        reason = "geometry (stride/padding/dilation/groups) computed at run time"
    return FunctionalSite(node.name, kind, w_name, b_name, kwargs, reason, followed, bias_node)


def _mark_positions(graph: fx.Graph, parametric: dict[fx.Node, list[str]]) -> tuple[list, list]:
    """First: parametric nodes with no parametric ancestor; last: none downstream."""
    nodes = list(graph.nodes)
    before: dict[fx.Node, bool] = {}
    for n in nodes:
        before[n] = any(before[i] or i in parametric for i in n.all_input_nodes)
    after: dict[fx.Node, bool] = {}
    for n in reversed(nodes):
        after[n] = any(after[u] or u in parametric for u in n.users)
    first = [parametric[n][0] for n in nodes if n in parametric and not before[n]]
    last = [parametric[n][-1] for n in nodes if n in parametric and not after[n]]
    return first, last


def analyse(model: nn.Module) -> GraphFacts:
    """Trace ``model`` with fx (timm leaf rules) and collect :class:`GraphFacts`."""
    try:
        graph = Tracer().trace(model)
    except Exception as e:  # fx raises many types; we report the message
        msg = brief(e, limit=160) or type(e).__name__
        return _module_walk(model, f"torch.fx could not trace {type(model).__name__} ({msg})")
    facts = GraphFacts(mode="fx", graph=graph)
    modules = dict(model.named_modules())
    candidates = _candidates(model)
    parametric: dict[fx.Node, list[str]] = {}
    seen: set[str] = set()
    for node in graph.nodes:
        if node.op == "call_module":
            name = str(node.target)
            module = modules[name]
            if name in candidates:
                followed = _followed_by_norm(node, modules)
                facts.followed_by_norm[name] = facts.followed_by_norm.get(name, True) and followed
                bn = _batchnorm_after(node, modules) or ""
                facts.batchnorm_after[name] = "" if name in seen else bn
                if name not in seen:
                    facts.order.append(name)
                    seen.add(name)
                parametric[node] = [name]
                continue
            reason = _custom_reason(module)
            if reason:
                facts.custom[name] = reason
                parametric[node] = [name]
            inner = [c for c in candidates if c.startswith(name + ".")]
            if inner:
                parametric[node] = _merge_leaf(facts, module, name, inner, seen)
        elif node.op == "call_function" and node.target in _CONV_FNS | _LINEAR_FNS:
            site = _functional_site(node, model, _followed_by_norm(node, modules))
            facts.functional.append(site)
            if not site.reason:  # a fixed filter (DCT, blur) is not a first/last layer
                parametric[node] = [site.name]
    for name in candidates:
        if name not in seen and name not in facts.uncalled:
            facts.uncalled[name] = "never called as a module in the traced graph"
    facts.first, facts.last = _mark_positions(graph, parametric)
    return facts


def _merge_leaf(
    facts: GraphFacts, module: nn.Module, name: str, inner: list[str], seen: set[str]
) -> list[str]:
    """Candidates inside a leaf module: analysed on their own when fx can trace the leaf."""
    if type(module).__module__.startswith("torch.nn"):
        for c in inner:
            facts.uncalled[c] = f"inside {type(module).__name__}, which uses the weights directly"
        return inner
    sub = analyse(module)
    prefix = name + "."
    for c in sub.order:
        if prefix + c not in seen:
            facts.order.append(prefix + c)
            seen.add(prefix + c)
        facts.followed_by_norm[prefix + c] = sub.followed_by_norm[c]
        bn = sub.batchnorm_after.get(c, "")
        facts.batchnorm_after[prefix + c] = prefix + bn if bn else ""
    for c, reason in sub.uncalled.items():
        facts.uncalled[prefix + c] = reason
    for c, reason in sub.custom.items():
        facts.custom[prefix + c] = reason
    if sub.mode == "module-walk":
        leaf_note = f"{name}: {type(module).__name__} analysed by module walk ({sub.note})"
        facts.note = f"{facts.note}; {leaf_note}" if facts.note else leaf_note
    if sub.functional:
        for site in sub.functional:
            facts.custom[f"{name}({site.node})"] = (
                f"functional {site.kind} inside the non-traceable {type(module).__name__}"
            )
    ordered = [prefix + c for c in sub.order]
    return ordered or inner
