"""The Relax converters of adderize's layers, and the report of what they made: each
exported adder, binary, int8 or kept full-precision conv (and adder linear) becomes a
call of its adderize kernel, scheduled
as training scheduled it (tuned, the tile measured on this machine, or TVM's default),
with a report entry per kernel."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from adderize._errors import AdderizeError
from adderize.kernels import tvm_l1
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules import int8
from adderize.tvm_schedules.compute import FMA_FORMS, out_size
from adderize.tvm_schedules.cpu import tile
from adderize.tvm_schedules.kinds import KINDS, Workload, computes, schedule
from adderize.tvm_schedules.tuning import tuned_module

__all__ = ["OPAQUE", "SCHEDULES", "CompileReport", "Converters"]

OPAQUE = 8  # relax op_pattern kOpaque: FuseOps leaves our scheduled kernels alone


SCHEDULES = ("tuned", "hand", "default")


@dataclass
class CompileReport:
    """What :func:`compile_model` did: one entry per adder kernel, timings, the check."""

    target: str
    input_size: tuple[int, ...]
    kernels: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    max_abs_error: float | None = None

    @property
    def adder_kernels(self) -> list[dict[str, Any]]:
        return [k for k in self.kernels if KINDS[k["kind"]].family != "conv"]

    def summary(self) -> str:
        count = {how: sum(k["schedule"] == how for k in self.kernels) for how in SCHEDULES}
        dense = len(self.kernels) - len(self.adder_kernels)
        families: dict[str, int] = {}
        for k in self.adder_kernels:
            family = KINDS[k["kind"]].family
            families[family] = families.get(family, 0) + 1
        layers = ", ".join(f"{n} {family}" for family, n in families.items()) or "0 adder"
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        check = (
            "" if self.max_abs_error is None else f"; max |TVM - PyTorch| {self.max_abs_error:.2e}"
        )
        return (
            f"{layers} layers and {dense} full-precision conv(s) as "
            f"adderize kernels ({count['tuned']} tuned, {count['hand']} hand-scheduled, "
            f"{count['default']} TVM-default-scheduled) for {self.target}; {times}{check}"
        )


class Converters:
    """``custom_convert_map`` for the importer; records a report entry per kernel."""

    def __init__(self, target: str, report: CompileReport) -> None:
        self.target, self.report = target, report

    def _kernel_func(self, w: Workload) -> tuple[Any, str]:
        from tvm import te

        if self.target == "cuda":  # scheduled later by dlight with the rest of the model
            return te.create_prim_func(computes(w)), "default"
        tuned = tuned_module(w)
        if tuned is not None:
            return tuned["main"], "tuned"
        try:  # the register tile the training kernels measured fastest on this machine
            variant = tvm_build.variant(w)
            if variant is not None and variant.form in FMA_FORMS:
                # its FMA needs a 1.0 input and LLVM's contraction: the tile and inner loop
                # accumulated by adds
                variant = replace(variant, form=FMA_FORMS[variant.form])
            return schedule(w, variant=variant)["main"], "hand"
        except Exception:  # a shape the hand schedule cannot tile: TVM's own lowering
            return te.create_prim_func(computes(w)), "default"

    def _call(
        self,
        bb: Any,
        kind: str,
        shape: tuple[int, ...],
        args: list[Any],
        out: Any,
        dtype: str = "float32",
    ) -> Any:
        from tvm import relax

        func, how = self._kernel_func(Workload(kind, shape))
        func = func.with_attr("op_pattern", OPAQUE).without_attr("global_symbol")
        gv = bb.add_func(func, f"adder_{kind}")
        self.report.kernels.append({"kind": kind, "shape": list(shape), "schedule": how})
        return bb.emit(relax.call_tir(gv, args, relax.TensorType(out, dtype)))

    def conv2d(self, node: Any, importer: Any) -> Any:
        from tvm import relax

        bb = importer.block_builder
        x, w, stride, dil, groups, p = importer.retrieve_args(node)
        if float(p) != 1.0:
            raise AdderizeError(f"TVM export compiles p = 1 adder layers; {node.name} has p = {p}")
        n, c, hp, wp = (int(v) for v in x.ty.shape)
        t, cg, kh, kw = (int(v) for v in w.ty.shape)
        tg = t // groups
        oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
        op = relax.op
        pointwise = (kh, kw, stride, groups) == (1, 1, 1, 1)
        if pointwise and (hp * wp) % tvm_l1.POINTWISE_POSITIONS == 0:  # positions vectorised
            xin = bb.emit(op.reshape(x, (n, c, hp * wp)))
            rows = bb.emit(op.reshape(w, (t, c)))  # the weight as it is
            shape = (n, c, hp * wp, t)
            y = self._call(bb, "pointwise_forward_nchw", shape, [xin, rows], (n, t, hp * wp))
            return bb.emit(op.reshape(y, (n, t, oh, ow)))
        layout, perm = tvm_l1.forward_weight_layout(t, cg, kh, kw, groups)
        wt = bb.emit(op.permute_dims(op.reshape(w, layout), list(perm)))
        if len(layout) == 3:  # depthwise: NHWC, channel vectors
            xin = bb.emit(op.permute_dims(x, [0, 2, 3, 1]))
            shape = (n, c, hp, wp, kh, kw, stride, dil)
            y = self._call(bb, "depthwise_forward", shape, [xin, wt], (n, oh, ow, t))
            return bb.emit(op.permute_dims(y, [0, 3, 1, 2]))
        # NCHW in, NCHW out: the graph needs no transpose around the layer
        shape = (n, c, hp, wp, t, kh, kw, stride, dil, groups)
        y = self._call(bb, "conv_forward_nchw", shape, [x, wt], (n, groups, tg, oh, ow))
        return bb.emit(op.reshape(y, (n, t, oh, ow)))

    def int8_conv2d(self, node: Any, importer: Any) -> Any:
        """The int8 adder layer: the padded float input quantized to the layer's grid in
        NHWC (channels padded to whole SAD chunks with the zero point), the byte-SAD
        kernel, the int32 sums scaled back to float NCHW. The quantize and dequantize are
        elementwise and fuse with the transposes and the ops around the layer."""
        from tvm import relax

        bb = importer.block_builder
        x, qw, scale, zero_point, stride, dil = importer.retrieve_args(node)
        n, c, hp, wp = (int(v) for v in x.ty.shape)
        t, kh, kw, cpad = (int(v) for v in qw.ty.shape)
        oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
        op = relax.op
        if cpad > c:  # float 0 quantizes to the zero point, as in the eager kernel
            x = bb.emit(op.nn.pad(x, [0, 0, 0, cpad - c, 0, 0, 0, 0]))
        q = op.divide(op.permute_dims(x, [0, 2, 3, 1]), relax.const(float(scale)))
        q = op.add(op.round(q), relax.const(float(zero_point)))
        xq = bb.emit(op.astype(op.clip(q, 0, 255), "uint8"))
        group = int8.sad_group() or 4
        shape = (n, hp, wp, cpad, t, kh, kw, stride, dil, group)
        y = self._call(bb, "int8_conv_forward", shape, [xq, qw], (n, oh, ow, t), "int32")
        y = op.multiply(op.astype(y, "float32"), relax.const(-float(scale)))
        return bb.emit(op.permute_dims(y, [0, 3, 1, 2]))

    def binary_conv2d(self, node: Any, importer: Any) -> Any:
        """The packed binary layer: its padded sign input packed into 32-channel words (a
        bit per channel, a validity bit masking the padding), the XNOR + popcount kernel,
        NCHW float out. Packing sums distinct powers of two in uint32 (an OR, no carry)."""
        import numpy as np
        from tvm import relax

        bb = importer.block_builder
        signs, wb, alpha, stride, dil = importer.retrieve_args(node)
        n, c, hp, wp = (int(v) for v in signs.ty.shape)
        t, kh, kw, q = (int(v) for v in wb.ty.shape)
        oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
        op = relax.op
        x = op.permute_dims(signs, [0, 2, 3, 1])
        if q * 32 > c:
            x = op.nn.pad(x, [0, 0, 0, 0, 0, 0, 0, q * 32 - c])
        x = bb.emit(x)
        shifts = relax.const(np.arange(32, dtype=np.uint32))

        def pack(bits: Any) -> Any:
            words = op.reshape(op.astype(bits, "uint32"), (n, hp, wp, q, 32))
            return bb.emit(op.astype(op.sum(op.left_shift(words, shifts), axis=[-1]), "int32"))

        zero = relax.const(0.0)
        xb, mb = pack(op.greater(x, zero)), pack(op.not_equal(x, zero))
        shape = (n, hp, wp, q, t, kh, kw, stride, dil)
        y = self._call(bb, "binary_conv_forward", shape, [xb, mb, wb, alpha], (n, oh, ow, t))
        return bb.emit(op.permute_dims(y, [0, 3, 1, 2]))

    def dense_conv(self, node: Any, importer: Any) -> Any:
        """Full-precision ``aten.conv2d`` / ``aten.convolution`` (the kept first layer, ...)
        on the same hand-scheduled direct-conv loops as the adder layers (TVM's default
        lowering of conv2d is untiled and serial); other cases go to TVM's converter."""
        from tvm import relax

        name = node.target.__name__
        default = importer._convolution if name.startswith("convolution") else importer._conv2d
        args = list(importer.retrieve_args(node))
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        if name.startswith("convolution"):
            stride, padding, dil, transposed, _, groups = args[3:9]
        else:
            defaults = [None, [1, 1], [0, 0], [1, 1], 1]
            args += defaults[len(args) - 2 :]
            stride, padding, dil, groups, transposed = args[3], args[4], args[5], args[6], False
        shape_ok = len(x.ty.shape) == 4 and len(w.ty.shape) == 4
        if (
            self.target != "cpu" or transposed or not shape_ok or isinstance(padding, str)
            or len(set(stride)) != 1 or len(set(dil)) != 1
        ):  # fmt: skip
            return default(node)
        n, c, h, wd = (int(v) for v in x.ty.shape)
        t, cg, kh, kw = (int(v) for v in w.ty.shape)
        ph, pw = (int(v) for v in padding)
        s, d, groups = int(stride[0]), int(dil[0]), int(groups)
        op = relax.op
        if ph or pw:
            x = importer.block_builder.emit(op.nn.pad(x, [0, 0, 0, 0, ph, ph, pw, pw]))
        hp, wp = h + 2 * ph, wd + 2 * pw
        oh, ow = out_size(hp, kh, s, d), out_size(wp, kw, s, d)
        bb = importer.block_builder
        tg = t // groups
        layout = (groups, tg, cg, kh, kw)  # the direct-conv layout, depthwise included
        wt = op.permute_dims(op.reshape(w, layout), [0, 2, 3, 4, 1])
        shape = (n, c, hp, wp, t, kh, kw, s, d, groups)
        y = self._call(bb, "conv_mac_forward", shape, [x, bb.emit(wt)], (n, oh, ow, groups, tg))
        y = bb.emit(op.permute_dims(op.reshape(y, (n, oh, ow, t)), [0, 3, 1, 2]))
        if bias is not None:
            y = bb.emit(op.add(y, op.reshape(bias, (1, t, 1, 1))))
        return y

    def exp2(self, node: Any, importer: Any) -> Any:
        """``2 ** x`` (shift layers build their power-of-two weights with it; TVM's
        importer lacks it). On constant weights it folds away at build time."""
        from tvm import relax

        (x,) = importer.retrieve_args(node)
        two = relax.const(2.0, x.ty.dtype)
        return importer.block_builder.emit(relax.op.power(two, x))

    def linear(self, node: Any, importer: Any) -> Any:
        from tvm import relax

        bb = importer.block_builder
        x, w, p = importer.retrieve_args(node)
        if float(p) != 1.0:
            raise AdderizeError(f"TVM export compiles p = 1 adder layers; {node.name} has p = {p}")
        m, k = (int(v) for v in x.ty.shape)
        t = int(w.ty.shape[0])
        _, tp = tile(t)
        op = relax.op
        wt = op.permute_dims(w, [1, 0])
        if tp != t:
            wt = op.nn.pad(wt, [0, 0, 0, tp - t])
        y = self._call(bb, "forward", (m, tp, k), [x, bb.emit(wt)], (m, tp))
        return y if tp == t else bb.emit(op.strided_slice(y, axes=[1], begin=[0], end=[t]))


# ------------------------------------------------------------------------------ compile
