"""The TVM adder kernels as PyTorch sees them, forward: direct dense and depthwise
convolutions (p = 1, and l_p with p a run-time argument) and the row ("GEMM") form used by
linear layers and the remaining convs (p = 1, forward and input gradient), on torch tensors
passed zero-copy (DLPack). The convolutions' input gradients are in
:mod:`adderize.kernels.tvm_grad`.

Where each job lives:

* compute definitions: :mod:`adderize.tvm_schedules.compute` (shared with tuning and
  whole-model compilation);
* CPU schedules and the candidate register tiles: :mod:`adderize.tvm_schedules.cpu`;
* build, per-machine selection and the disk cache: :mod:`adderize.tvm_schedules.build`;
* MetaSchedule tuning: :mod:`adderize.tvm_schedules.tuning`;
* CUDA: :mod:`adderize.tvm_schedules.cuda`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from adderize.kernels import weight_cache
from adderize.tvm_schedules.build import available, kernel, tune, unavailable_reason, workloads
from adderize.tvm_schedules.compute import out_size
from adderize.tvm_schedules.cpu import tile
from adderize.tvm_schedules.cuda import cuda_executable
from adderize.tvm_schedules.kinds import Workload
from adderize.tvm_schedules.tuning import tuned, tuning_dir

__all__ = [
    "NO_PADS",
    "Pads",
    "available",
    "conv_forward",
    "conv_supported",
    "cuda_executable",
    "forward",
    "forward_plan",
    "forward_weight_layout",
    "grad_a",
    "one_position",
    "pads_fused",
    "pointwise_nchw",
    "supported",
    "tune",
    "tuned",
    "tuning_dir",
    "unavailable_reason",
    "workloads",
]


def supported(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether these ``[G, M, K]`` / ``[G, T, K]`` operands can use the TVM kernels."""
    return (
        a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and b.shape[1] >= 8
        and a.shape[2] >= 8
    )


def _pad_last(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.shape[-1] == n else F.pad(x, (0, n - x.shape[-1]))


def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``-sum_k |a - b|`` for ``a: [G, M, K]``, ``b: [G, T, K]`` (float32, CPU) -> [G, M, T]."""
    groups, m, k = a.shape
    t = b.shape[1]
    _, tp = tile(t)
    fn = kernel(Workload.of("forward", m, tp, k))
    out = a.new_empty(groups, m, tp)
    for g in range(groups):
        fn(a[g].contiguous(), _pad_last(b[g].t(), tp).contiguous(), out[g])
    return out if tp == t else out[..., :t].contiguous()


def grad_a(a: torch.Tensor, b: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``sum_t G HardTanh(b - a)`` for ``a: [G, M, K]``, ``b: [G, T, K]``,
    ``grad_out: [G, M, T]`` (float32, CPU) -> [G, M, K]."""
    groups, m, k = a.shape
    t = b.shape[1]
    _, kp = tile(k)
    fn = kernel(Workload.of("grad_a", m, t, kp))
    out = a.new_empty(groups, m, kp)
    gs = grad_out.sum(2)
    for g in range(groups):
        fn(
            _pad_last(a[g], kp).contiguous(),
            _pad_last(b[g], kp).contiguous(),
            grad_out[g].contiguous(),
            gs[g].contiguous(),
            out[g],
        )
    return out if kp == k else out[..., :k].contiguous()


def _prepared(
    weight: torch.Tensor,
    kind: str,
    make: Callable[[], tuple[torch.Tensor, ...]],
    *,
    keep: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Weight re-layouts, reused while the weight is the same tensor with the same storage
    and version (inference: every call after the first; in-place edits through ``.data``
    bypass the version counter and are not seen); a weak reference guards against reuse of a
    freed tensor's id. Made afresh and not kept when not ``keep`` (a training step): the
    optimizer changes the weight right after, so a kept copy would never be reused and
    would hold the converted layers' size of memory (resnet18 training at batch 8,
    160 px: 0.45 -> 0.36 GiB with the backward's re-layouts no longer kept)."""
    if not keep:
        return make()
    state = weight_cache.weight_state(weight)
    hit = weight_cache.get(weight, kind, state)
    return hit if hit is not None else weight_cache.put(weight, kind, state, make())


def conv_supported(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether the direct conv kernels apply: float32 CPU, and per-group in/out channels
    multiples of 8 (the vector tiles), depthwise on an NCHW input (any width: the plane
    kernels) or channels-last with channels a multiple of 8, or a dense conv of any width
    (its channels are zero-padded to multiples of 8: SE and other narrow layers). Narrow
    grouped convs (e.g. ResNeXt's 4 channels per group) use the fallback."""
    if not (
        x.dtype == weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
    ):
        return False
    cg, tg = weight.shape[1], weight.shape[0] // groups
    return (
        (cg % 8 == 0 and tg % 8 == 0)
        or _depthwise(weight, groups)
        or pads_fused(x, weight, groups)
        or groups == 1
    )


def _round8(n: int) -> int:
    return -(-n // 8) * 8


def _narrow(weight: torch.Tensor, groups: int) -> bool:
    """A dense conv whose channels are not multiples of 8: computed zero-padded."""
    t, c = weight.shape[:2]
    return groups == 1 and (t % 8 != 0 or c % 8 != 0)


def _padded_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with zero filters and zero input channels up to multiples of 8: a zero
    input channel against a zero weight adds ``|0 - 0| = 0``; the extra outputs are dropped."""
    t, c = weight.shape[:2]
    return F.pad(weight.detach(), (0, 0, 0, 0, 0, _round8(c) - c, 0, _round8(t) - t))


def _pad_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x if x.shape[1] == channels else F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


def _is_depthwise(t: int, cg: int, groups: int) -> bool:
    """One input and one output channel per group, channels a multiple of 8."""
    return cg == 1 and t == groups and groups % 8 == 0


def _depthwise(weight: torch.Tensor, groups: int) -> bool:
    return _is_depthwise(weight.shape[0], weight.shape[1], groups)


def forward_weight_layout(
    t: int, cg: int, kh: int, kw: int, groups: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(reshape, permutation) taking an OIHW conv weight to the forward kernels' layout:
    ``[kh, kw, C]`` for depthwise, ``[G, Cg, kh, kw, Tg]`` otherwise. The one definition
    shared by the training kernels and the compiled-model converter."""
    if _is_depthwise(t, cg, groups):
        return (t, kh, kw), (1, 2, 0)
    return (groups, t // groups, cg, kh, kw), (0, 2, 3, 4, 1)


#: zero padding as ``F.pad`` takes it for NCHW: (left, right, top, bottom)
Pads = tuple[int, int, int, int]
NO_PADS: Pads = (0, 0, 0, 0)


def pads_fused(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether :func:`conv_forward` / :func:`conv_grad_input` take this conv's input
    unpadded, zero padding inside the kernel (the depthwise plane kernels, NCHW input, any
    number of channels): no padded copy of the input is written, kept for the backward,
    or cropped after it."""
    return weight.shape[1] == 1 and weight.shape[0] == groups and x.is_contiguous()


def _transposed(w: torch.Tensor, g: int, r: int) -> torch.Tensor:
    """``w`` viewed as ``[g, T, r]``, transposed to ``[g, r, T]`` (contiguous): the weight
    re-layouts of the conv kernels, by the blocked transpose kernel, faster than PyTorch's
    permute-copy at every size and paid at every training step (``benchmarks/small_kernels
    .py``, Zen 4: 96 x 24, 0.9 against 3.5 us; 384 x 64, 4.2 against 17.2 us; 512 x 512,
    116 against 290 us; a kernel builds in 20-60 ms)."""
    w3 = w.detach().reshape(g, -1, r)
    if 1 in w3.shape[1:]:  # a vector: nothing moves
        return w3.reshape(g, r, -1).contiguous()
    if w.dtype != torch.float32 or w.device.type != "cpu":
        return w3.transpose(1, 2).contiguous()
    out = w3.new_empty(g, r, w3.shape[1])
    kernel(Workload.of("transpose", *w3.shape))(w3.contiguous(), out)
    return out


def _forward_weight(weight: torch.Tensor, groups: int, keep: bool) -> torch.Tensor:
    """The weight in the forward kernels' layout (:func:`forward_weight_layout`): each
    group's ``[Tg, Cg kh kw]`` transposed."""

    def prepare() -> tuple[torch.Tensor, ...]:
        shape, perm = forward_weight_layout(*weight.shape, groups)
        g = 1 if len(shape) == 3 else groups  # depthwise: all channels in one transpose
        return (_transposed(weight, g, weight[0].numel()).reshape([shape[i] for i in perm]),)

    return _prepared(weight, "forward", prepare, keep=keep)[0]


def forward_plan(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    dil: int,
    groups: int,
    p: float = 1.0,
    pads: Pads = NO_PADS,
    keep: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The call :func:`conv_forward` makes on inputs like ``x`` (same shape, contiguous
    NCHW), resolved once: the kernel, the weight's re-layout and the output's shape, so
    that a caller seeing the same input and weight again (inference) pays a few
    microseconds, not the checks (a batch-1 squeeze-excite conv takes 7 us). Dense convs
    (:func:`pointwise_nchw` ones on their own kernel), the depthwise plane kernel and
    :func:`one_position` convs; None where the input takes another path
    (channels-last, a strided pointwise conv's subsampling). ``keep``: whether the
    weight's re-layout is cached (see :func:`_prepared`)."""
    if not x.is_contiguous():
        return None
    t, _, kh, kw = weight.shape
    n, c, h, w = x.shape
    left, right, top, bottom = pads
    hp, wp = h + top + bottom, w + left + right
    oh, ow, tg = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil), t // groups
    lp, extra = p != 1.0, (() if p == 1.0 else (float(p),))
    single = one_position(x, weight, stride, groups, p, pads)
    if single or pointwise_nchw(x, weight, stride, groups, p, pads):  # the weight as it is
        if single:  # one position: vectors of channels
            fn, x_rows, out_rows = kernel(Workload.of("one_position_forward", t, c)), (c,), (t,)
        else:  # positions vectorised
            fn = kernel(Workload.of("pointwise_forward_nchw", n, c, h * w, t))
            x_rows, out_rows = (n, c, h * w), (n, t, h * w)
        rows = weight.detach().reshape(t, c).contiguous()

        def pointwise(x: torch.Tensor) -> torch.Tensor:
            out = x.new_empty(n, t, h, w)
            fn(x.view(x_rows), rows, out.view(out_rows))
            return out

        return pointwise
    if pads_fused(x, weight, groups):  # an NCHW model: each channel's plane on its own
        shape = (n, c, h, w, kh, kw, stride, dil, top, bottom, left, right)
        plane = kernel(Workload.of("depthwise_forward_nchw", *shape, lp=lp))
        taps = weight.detach().reshape(t, kh, kw).contiguous()

        def planes(x: torch.Tensor) -> torch.Tensor:
            out = x.new_empty(n, c, oh, ow)
            plane(x, taps, out, *extra)
            return out

        return planes
    if _depthwise(weight, groups) or (kh == kw == 1 and stride > 1 and n >= 8):
        return None
    fn = kernel(
        Workload.of("conv_forward_nchw", n, c, hp, wp, t, kh, kw, stride, dil, groups, lp=lp)
    )
    wt = _forward_weight(weight, groups, keep)
    padded = any(pads)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(n, groups, tg, oh, ow)  # an NCHW model: no layout copy after
        fn(F.pad(x, pads) if padded else x, wt, out, *extra)
        return out.view(n, t, oh, ow)

    return run


def conv_forward(
    xp: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    dil: int,
    groups: int,
    p: float = 1.0,
    pads: Pads = NO_PADS,
    keep: bool = True,
) -> torch.Tensor:
    """``-sum |X - W|^p`` adder conv of an NCHW input, padded already or by ``pads``; the
    result is contiguous NCHW for a contiguous input, else NCHW in channels-last memory (no
    copy either way). Depthwise convs use the plane kernel (one channel's output rows
    vectorised, the padding inside the kernel) on an NCHW input, the channel-vectorised
    kernel on a channels-last one; p != 1 uses the l_p kernels (p passed at run time, no
    recompilation). ``keep``: cache the weight's re-layout (inference; see
    :func:`_prepared`)."""
    plan = forward_plan(xp, weight, stride, dil, groups, p, pads, keep)
    if plan is not None:
        return plan(xp)
    t, _, kh, kw = weight.shape
    lp, extra = p != 1.0, (() if p == 1.0 else (float(p),))
    if any(pads):
        xp = F.pad(xp, pads)
    if kh == kw == 1 and stride > 1 and xp.shape[0] >= 8:
        # pointwise: the positions it reads, then stride 1 (1024->2048 s2 @14, batch 32:
        # 2.20x -> 1.74x conv; at batch 1 the strided kernel is faster, 1.64x vs 2.03x;
        # Zen 4)
        fmt = torch.contiguous_format if xp.is_contiguous() else torch.channels_last
        xp, stride = xp[:, :, ::stride, ::stride].contiguous(memory_format=fmt), 1
    n, c, hp, wp = xp.shape
    tg = t // groups
    oh, ow = out_size(hp, kh, stride, dil), out_size(wp, kw, stride, dil)
    dw = _depthwise(weight, groups)
    if xp.is_contiguous() and not dw:  # the subsampled input of a strided pointwise conv
        return forward_plan(xp, weight, stride, dil, groups, p, keep=keep)(xp)  # type: ignore[misc]
    wt = _forward_weight(weight, groups, keep)
    if dw:
        out = xp.new_empty(n, oh, ow, t)
        fn = kernel(Workload.of("depthwise_forward", n, c, hp, wp, kh, kw, stride, dil, lp=lp))
        fn(xp.permute(0, 2, 3, 1).contiguous(), wt, out, *extra)
        return out.permute(0, 3, 1, 2)
    shape = (n, c, hp, wp, t, kh, kw, stride, dil, groups)
    out = xp.new_empty(n, oh, ow, groups, tg)
    kernel(Workload.of("conv_forward", *shape, lp=lp))(xp.contiguous(), wt, out, *extra)
    return out.view(n, oh, ow, t).permute(0, 3, 1, 2)


def one_position(
    x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int, p: float, pads: Pads
) -> bool:
    """Whether a conv is an ungrouped l1 1x1 stride-1 conv with a single output position
    (batch-1 squeeze-excite): its forward and both gradients are the serial one-position
    kernels on the weight as it is (the direct kernels' pool hand-offs, weight re-layouts
    and window sums cost more than its arithmetic: 1152 -> 48, 0.1 ms, 8x the conv)."""
    one = x.shape[0] * x.shape[2] * x.shape[3] == 1
    return one and _plain_pointwise(weight, stride, groups, p, pads)


def _plain_pointwise(weight: torch.Tensor, stride: int, groups: int, p: float, pads: Pads) -> bool:
    """An ungrouped, unpadded l1 1x1 stride-1 conv."""
    plain = weight.shape[-2:] == (1, 1) and stride == 1 and groups == 1
    return plain and p == 1.0 and not any(pads)


#: position tiles of the pointwise NCHW kernels: the positions per image must fill them
POINTWISE_POSITIONS = 16


def pointwise_nchw(
    x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int, p: float, pads: Pads
) -> bool:
    """Whether an l1 conv's forward is the pointwise NCHW kernel (ungrouped 1x1 stride 1,
    unpadded, contiguous NCHW, positions a multiple of :data:`POINTWISE_POSITIONS`):
    positions vectorised, the weight as it is, the output written along its rows
    (:func:`~adderize.tvm_schedules.compute.dense.pointwise_forward_nchw_compute`)."""
    fits = (x.shape[2] * x.shape[3]) % POINTWISE_POSITIONS == 0
    return _plain_pointwise(weight, stride, groups, p, pads) and fits and x.is_contiguous()
