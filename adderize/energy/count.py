"""Operation counting by shape propagation (torch.fx on the meta device, hooks as fallback).

Conventions (the papers' way of counting; stated in every report):

* a multiply-accumulate (MAC) of a conv / linear layer is 1 mult + 1 add;
* an adder MAC is 2 adds: the subtraction, and the accumulation of its absolute value
  (the absolute value folds into the accumulate as a sign-controlled add/subtract);
* a binary MAC is 1 XNOR + 1 popcount bit, plus 1 mult per output for the channel scale;
* a shift MAC is 1 shift + 1 add;
* a bias is 1 add per output element;
* BatchNorm (inference, folded affine) is 1 mult + 1 add per element; norms computing
  statistics at run time (LayerNorm, GroupNorm) 4 adds + 2 mults per element;
* ReLU-like activations are 1 compare per element (priced as an add); smooth activations
  (SiLU, GELU, sigmoid, ...) 2 mults + 2 adds per element (a rough polynomial estimate);
* max pooling is (window - 1) compares per output; average pooling (window - 1) adds and
  1 mult per output; element-wise add / mul are 1 add / 1 mult per output element.

Layers are counted once per call (a module used twice counts twice).
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from adderize._errors import AdderizeError, AdderizeTypeError
from adderize.nn import Conv2dLike, LinearLike
from adderize.passes.registry import op_of_layer
from adderize.passes.trace import Tracer, is_norm

__all__ = ["OpCount", "count_ops", "layer_op"]

_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.PReLU, nn.Threshold)
_SMOOTH = (
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.Softplus,
    nn.Softmax,
)
# functions and tensor methods by counting category
_CATEGORIES: dict[str, tuple[Any, ...]] = {
    "relu": (
        F.relu,
        F.relu6,
        F.leaky_relu,
        F.hardtanh,
        torch.relu,
        torch.clamp,
        "relu",
        "relu_",
        "clamp",
        "clamp_",
    ),
    "smooth": (
        F.gelu,
        F.silu,
        F.sigmoid,
        torch.sigmoid,
        F.tanh,
        torch.tanh,
        F.hardswish,
        F.hardsigmoid,
        F.mish,
        F.softmax,
        torch.softmax,
        "sigmoid",
        "sigmoid_",
        "tanh",
        "softmax",
    ),
    "add": (
        operator.add,
        operator.iadd,
        operator.sub,
        torch.add,
        torch.sub,
        "add",
        "add_",
        "sub",
        "sub_",
    ),
    "mul": (
        operator.mul,
        operator.imul,
        operator.truediv,
        torch.mul,
        torch.div,
        "mul",
        "mul_",
        "div",
        "div_",
    ),
    "avgpool": (F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean, "mean", "sum"),
    "maxpool": (F.adaptive_max_pool2d, F.max_pool2d),
    "matmul": (torch.matmul, operator.matmul, torch.bmm),
    "conv": (F.conv2d, torch.conv2d, F.linear),
}
_CATEGORY_OF = {t: cat for cat, targets in _CATEGORIES.items() for t in targets}


@dataclass
class OpCount:
    """Counts of one graph node.

    For conv / linear layers (``kind`` ``"conv2d"`` / ``"linear"``) the op-dependent counts
    come from ``macs`` (see :func:`adderize.energy.cost.layer_counts`); other nodes carry
    their ``counts`` directly.
    """

    name: str
    kind: str  # conv2d | linear | norm | act | pool | eltwise | matmul | other
    type: str
    op: str = ""  # conv | adder | binary | shift for conv2d/linear; else ""
    macs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    weight_numel: int = 0
    in_numel: int = 0
    out_numel: int = 0
    bias: bool = False
    out_channels: int = 0

    @property
    def parametric(self) -> bool:
        return self.kind in ("conv2d", "linear")


def layer_op(module: nn.Module) -> str | None:
    """The registered op a conv/linear-like module computes (``OpSpec.layers``), None for
    other modules. A multiplication-free layer class no registered op declares is an
    error, not a conv: it would be priced as multiplications without a word."""
    op = op_of_layer(module)
    if op in ("conv", None) and isinstance(module, (Conv2dLike, LinearLike)):
        raise AdderizeError(
            f"{type(module).__name__} is a converted layer that no registered op declares: "
            "register its op with OpSpec(layers=(YourLayer, ...), counts=...) so energy "
            "reports can price it"
        )
    return op


def _numel(meta: Any) -> int:
    """Elements of a node's value (tensor, or tuple/list of tensors)."""
    if meta is None:
        return 0
    if hasattr(meta, "shape"):
        return math.prod(meta.shape)
    if isinstance(meta, (tuple, list)):
        return sum(_numel(m) for m in meta)
    return 0


def _parametric(name: str, module: nn.Module, out_numel: int, in_numel: int) -> OpCount:
    weight = module.weight
    per_out = weight[0].numel() if weight.dim() > 1 else 1  # Cin/groups * kh * kw, or Cin
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        per_out = weight.shape[0] // module.groups * math.prod(weight.shape[2:])
    kind = "linear" if isinstance(module, nn.Linear) else "conv2d"
    return OpCount(
        name,
        kind,
        type(module).__name__,
        op=layer_op(module) or "conv",
        macs=out_numel * per_out,
        weight_numel=weight.numel(),
        in_numel=in_numel,
        out_numel=out_numel,
        bias=getattr(module, "bias", None) is not None,
        out_channels=weight.shape[0],
    )


def _pool_counts(window: int, out_numel: int, is_max: bool) -> dict[str, int]:
    if is_max:
        return {"compare": (window - 1) * out_numel}
    return {"add": (window - 1) * out_numel, "mult": out_numel}


def _module_count(name: str, module: nn.Module, ins: int, outs: int) -> OpCount:
    t = type(module).__name__
    if layer_op(module) is not None and hasattr(module, "weight"):
        return _parametric(name, module, outs, ins)
    if is_norm(module):
        stats = not isinstance(module, nn.modules.batchnorm._BatchNorm) and "BatchNorm" not in t
        counts = {"add": 4 * outs, "mult": 2 * outs} if stats else {"add": outs, "mult": outs}
        act = getattr(module, "act", None)  # timm BatchNormAct2d / GroupNormAct fuse one
        if act is not None and not isinstance(act, nn.Identity):
            counts["compare"] = outs
        return OpCount(name, "norm", t, counts=counts, in_numel=ins, out_numel=outs)
    if isinstance(module, _RELU_LIKE):
        return _elementwise(name, t, "relu", ins, outs)
    if isinstance(module, _SMOOTH):
        return _elementwise(name, t, "smooth", ins, outs)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size
        window = k * k if isinstance(k, int) else math.prod(k)
        counts = _pool_counts(window, outs, isinstance(module, nn.MaxPool2d))
        return OpCount(name, "pool", t, counts=counts, in_numel=ins, out_numel=outs)
    if "Pool" in t:  # adaptive / global pools (timm SelectAdaptivePool2d, ...)
        window = max(ins // max(outs, 1), 1)
        counts = _pool_counts(window, outs, "Max" in t)
        return OpCount(name, "pool", t, counts=counts, in_numel=ins, out_numel=outs)
    if isinstance(module, (nn.Identity, nn.Dropout, nn.Flatten)) or "Drop" in t:
        return OpCount(name, "view", t)
    return OpCount(name, "other", t, in_numel=ins, out_numel=outs)


def _elementwise(name: str, t: str, category: str, ins: int, outs: int) -> OpCount:
    """Counts of a node whose cost is a fixed number of ops per output element."""
    kind, counts = {
        "relu": ("act", {"compare": outs}),
        "smooth": ("act", {"add": 2 * outs, "mult": 2 * outs}),
        "add": ("eltwise", {"add": outs}),
        "mul": ("eltwise", {"mult": outs}),
        "avgpool": ("pool", _pool_counts(max(ins // max(outs, 1), 1), outs, False)),
        "maxpool": ("pool", _pool_counts(max(ins // max(outs, 1), 1), outs, True)),
    }[category]
    return OpCount(name, kind, t, counts=counts, in_numel=ins, out_numel=outs)


def _function_count(node: fx.Node, ins: int, outs: int) -> OpCount | None:
    target = node.target
    t = str(target) if node.op == "call_method" else getattr(target, "__name__", str(target))
    category = _CATEGORY_OF.get(target)  # type: ignore[arg-type]
    if category is None:
        return None
    if category == "matmul":
        a = node.args[0].meta.get("tensor_meta")  # type: ignore[union-attr]
        k = a.shape[-1] if a is not None else 0
        return OpCount(
            node.name,
            "matmul",
            t,
            counts={"mult": outs * k, "add": outs * k},
            in_numel=ins,
            out_numel=outs,
        )
    if category == "conv":
        w = node.args[1].meta.get("tensor_meta") if len(node.args) > 1 else None  # type: ignore[union-attr]
        per_out = math.prod(w.shape[1:]) if w is not None else 0
        return OpCount(
            node.name,
            "linear" if target is F.linear else "conv2d",
            t,
            op="conv",
            macs=outs * per_out,
            weight_numel=math.prod(w.shape) if w is not None else 0,
            in_numel=ins,
            out_numel=outs,
        )
    return _elementwise(node.name, t, category, ins, outs)


def _count_fx(model: nn.Module, example: torch.Tensor) -> list[OpCount]:
    meta_model = copy.deepcopy(model).to("meta").eval()  # inference energy, eval-mode graph
    gm = fx.GraphModule(meta_model, Tracer().trace(meta_model))
    ShapeProp(gm).propagate(example.to("meta"))
    modules = dict(gm.named_modules())
    counts = []
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        outs = _numel(node.meta.get("tensor_meta"))
        ins = sum(
            _numel(a.meta.get("tensor_meta")) for a in node.all_input_nodes if a.op != "get_attr"
        )
        if node.op == "call_module":
            c = _module_count(str(node.target), modules[str(node.target)], ins, outs)
        else:
            c = _function_count(node, ins, outs)
        if c is not None and c.kind != "view":
            counts.append(c)
    return counts


def _count_hooks(model: nn.Module, example: torch.Tensor) -> list[OpCount]:
    """Fallback for models fx cannot trace: forward hooks on leaf modules (functional ops,
    e.g. residual adds, are not seen and the report says so)."""
    counts: list[OpCount] = []
    handles = []

    def hook(name: str) -> Any:
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            ins = sum(_numel(a) for a in args if isinstance(a, torch.Tensor))
            c = _module_count(name, module, ins, _numel(output))
            if c.kind != "view":
                counts.append(c)

        return fn

    for name, module in model.named_modules():
        leaf = layer_op(module) is not None or not any(True for _ in module.children())
        if name and leaf and (layer_op(module) is not None or not _inside_parametric(name, model)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return counts


def _inside_parametric(name: str, model: nn.Module) -> bool:
    parent = name.rpartition(".")[0]
    while parent:
        if layer_op(model.get_submodule(parent)) is not None:
            return True
        parent = parent.rpartition(".")[0]
    return False


def count_ops(model: nn.Module, input_size: tuple[int, ...]) -> tuple[list[OpCount], str]:
    """Per-node op counts of ``model`` on an input of ``input_size`` (N, C, H, W).

    Returns the counts and the method used: ``"fx"`` (shape propagation on the meta device,
    every graph node) or ``"hooks"`` (module hooks on CPU; functional ops not counted).
    """
    if not isinstance(model, nn.Module):
        raise AdderizeTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    size = tuple(input_size)
    if len(size) != 4 or not all(isinstance(s, int) and s > 0 for s in size):
        raise AdderizeError(
            f"input_size must be 4 positive ints (N, C, H, W), e.g. (1, 3, 224, 224); got "
            f"{input_size!r}"
        )
    example = torch.zeros(size)
    try:
        return _count_fx(model, example), "fx"
    except Exception:  # untraceable or meta-incompatible model: count on CPU with hooks
        was_training = model.training
        model.eval()
        try:
            return _count_hooks(model, example), "hooks"
        finally:
            model.train(was_training)
