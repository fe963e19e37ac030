"""TVM kernels against the independent reference; backend selection; cache; CUDA build."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from adderize.kernels import l1 as l1_mod
from adderize.kernels import tvm_grad, tvm_l1
from adderize.kernels.reference import adder2d_reference, adder_rows_reference
from adderize.nn import Adder2d, AdderLinear
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules.kinds import Workload
from adderize.tvm_schedules.tuning import tuned_module

pytestmark = pytest.mark.tvm
if not tvm_l1.available():
    pytest.skip(f"TVM unavailable: {tvm_l1.unavailable_reason()}", allow_module_level=True)


def _assert_matches(y, ref, x, x_ref, w, w_ref, atol=1e-3, x_atol=1e-4):
    """A layer's output and its input and weight gradients (``x.grad``, ``w.grad``) against
    the reference's (``x_ref``, ``w_ref`` are the reference's leaves)."""
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=atol)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=x_atol)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=atol)


def _kernel_kinds(monkeypatch) -> list[str]:
    """The kinds of the TVM kernels the layers call from now on (``_lp`` names the l_p
    ones), in call order."""
    kinds: list[str] = []
    original = tvm_l1.kernel
    for module in (tvm_l1, tvm_grad):  # forwards, input gradients
        monkeypatch.setattr(module, "kernel", lambda w: kinds.append(w.name) or original(w))
    return kinds


@pytest.mark.parametrize(
    ("groups", "m", "t", "k"),
    [
        (1, 50, 64, 72),  # tiles of 32 columns, row tail (50 % 6)
        (2, 33, 16, 40),  # groups, 16-wide tiles
        (1, 7, 24, 9),  # 8-wide output tiles, K padded to 16 in the gradient
        (1, 10, 20, 27),  # T padded to 32 in the forward
    ],
)
def test_tvm_kernels_match_the_reference(groups, m, t, k):
    torch.manual_seed(0)
    a = torch.randn(groups, m, k)
    b = torch.randn(groups, t, k) * 0.7
    g = torch.randn(groups, m, t)
    assert tvm_l1.supported(a, b)
    out = tvm_l1.forward(a, b)
    grad = tvm_l1.grad_a(a, b, g)
    for i in range(groups):
        ai = a[i].clone().requires_grad_()
        ref = adder_rows_reference(ai, b[i], 1.0)
        ref.backward(g[i])
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(grad[i], ai.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", [(16, 32, 3, 1, 1, 1), (8, 24, 3, 2, 1, 1), (16, 32, 3, 1, 2, 2)])
def test_layers_tvm_and_torch_backends_agree(case):
    cin, cout, k, stride, pad, dil = case
    torch.manual_seed(0)
    tvm_layer = Adder2d(cin, cout, k, stride, pad, dil, backend="tvm")
    torch_layer = Adder2d(cin, cout, k, stride, pad, dil, backend="torch")
    torch_layer.load_state_dict(tvm_layer.state_dict())
    x1 = torch.randn(2, cin, 9, 9, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = tvm_layer(x1), torch_layer(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-3)
    grad = torch.randn_like(y1)
    y1.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tvm_layer.weight.grad, torch_layer.weight.grad, rtol=1e-4, atol=1e-3)
    ref = adder2d_reference(
        x1.detach(), tvm_layer.weight.detach(), tvm_layer.bias.detach(), stride, pad, dil
    )
    torch.testing.assert_close(y1.detach(), ref, rtol=1e-5, atol=1e-3)


def test_adder_linear_uses_tvm_and_matches_torch():
    torch.manual_seed(0)
    a = AdderLinear(40, 24, backend="tvm")
    b = AdderLinear(40, 24, backend="torch")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5, 40)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-3)


def test_dispatch_uses_tvm_only_where_it_applies(monkeypatch):
    calls = []
    monkeypatch.setattr(
        tvm_l1,
        "forward",
        lambda a, b: calls.append("tvm") or torch.zeros(a.shape[0], a.shape[1], b.shape[1]),
    )
    a, b = torch.randn(1, 10, 16), torch.randn(1, 16, 16)
    l1_mod.l1_forward(a, b, 1.0)
    assert calls == ["tvm"]
    l1_mod.l1_forward(a, b, 1.5)  # l_p: PyTorch kernels
    l1_mod.l1_forward(a.double(), b.double(), 1.0)  # float64: PyTorch kernels
    l1_mod.l1_forward(a, b[:, :4], 1.0)  # 4 output channels: too narrow to vectorise
    l1_mod.l1_forward(a, b, 1.0, backend="torch")
    assert calls == ["tvm"]


def test_unavailable_tvm_warns_once_and_tvm_backend_raises(monkeypatch):
    monkeypatch.setitem(tvm_build._STATE, "ok", False)
    monkeypatch.setitem(tvm_build._STATE, "error", "ImportError: no tvm")
    monkeypatch.setattr(l1_mod, "_WARNED", set())
    layer = Adder2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 6, 6)
    with pytest.warns(RuntimeWarning, match="TVM is unavailable.*no tvm"):
        layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # only once
    layer.backend = "tvm"
    with pytest.raises(RuntimeError, match="backend='tvm' but TVM is unavailable"):
        layer(x)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'tvm', 'torch'\)"):
        Adder2d(2, 2, 1, backend="cuda")


def test_kernels_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tvm_build.forget()
    a, b = torch.randn(1, 11, 24), torch.randn(1, 16, 24)
    first = tvm_l1.forward(a, b)
    files = list((tmp_path / "adderize" / "kernels").glob("forward-*.so"))
    assert len(files) == 1
    tvm_build.forget()

    def no_build(*args):
        raise AssertionError("rebuilt a kernel that is in the disk cache")

    monkeypatch.setattr(tvm_build, "build", no_build)
    torch.testing.assert_close(tvm_l1.forward(a, b), first)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kind", ["forward", "grad_a"])
def test_cuda_build_compile_only(kind, arch):
    """No GPU here: the kernels must compile for CUDA so a GPU user gets them."""
    executable = tvm_l1.cuda_executable(kind, 256, 64, 576, arch)
    (device,) = executable.mod.imports
    assert device.kind == "cuda"
    assert "__global__" in device.inspect_source()


@pytest.mark.parametrize(
    ("n", "c", "h", "t", "k", "stride", "dil", "groups"),
    [
        (2, 16, 9, 32, 3, 1, 1, 1),
        (2, 16, 10, 32, 3, 2, 1, 1),  # stride 2: zero-dilated gradient
        (2, 16, 9, 16, 3, 1, 2, 2),  # dilation, groups
        (1, 8, 7, 24, 1, 1, 1, 1),  # pointwise, 8-wide tiles
        (2, 32, 8, 64, 3, 2, 1, 2),
        (2, 16, 9, 16, 3, 1, 1, 16),  # depthwise: channel-vectorised kernels
        (2, 24, 10, 24, 3, 2, 1, 24),  # depthwise, stride 2
        (1, 32, 9, 32, 5, 1, 2, 32),  # depthwise 5x5, dilation 2
        (2, 16, 9, 32, 1, 2, 1, 1),  # 1x1 stride 2: phases no tap reaches
        (1, 8, 11, 16, 5, 2, 1, 1),  # 5x5 stride 2, odd size: uneven phases
        (2, 16, 11, 16, 3, 2, 1, 16),  # depthwise stride 2, odd size
        (2, 12, 9, 12, 3, 1, 1, 12),  # depthwise of 12 channels: the plane kernels
        (1, 8, 12, 8, 3, 3, 1, 1),  # stride 3
        (2, 28, 1, 6, 1, 1, 1, 1),  # squeeze-excite 1x1 at 1x1: channels padded to 8s
        (2, 6, 7, 28, 3, 2, 1, 1),  # narrow dense conv, stride 2
    ],
)
@pytest.mark.parametrize("p", [1.0, 1.6])
def test_direct_conv_kernels_match_the_reference(
    n, c, h, t, k, stride, dil, groups, p, monkeypatch
):
    """p = 1 kernels and the l_p kernels (vectorised |d|^p, p passed at run time)."""
    torch.manual_seed(0)
    pad = (k // 2) * dil
    layer = Adder2d(c, t, k, stride, pad, dil, groups, bias=True, p=p, backend="tvm")
    taken = []
    original = tvm_l1.conv_forward
    monkeypatch.setattr(tvm_l1, "conv_forward", lambda *a: taken.append(1) or original(*a))
    x = torch.randn(n, c, h, h, requires_grad=True)
    y = layer(x)
    assert taken, "the direct conv kernel was not used"
    grad = torch.randn_like(y)
    y.backward(grad)
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(x2, w2, layer.bias.detach(), stride, pad, dil, groups, p)
    ref.backward(grad)
    # l_p: |d|^(p-1) by a polynomial with about 3e-6 relative error per term
    _assert_matches(y, ref, x, x2, layer.weight, w2, x_atol=1e-4 if p == 1.0 else 3e-4)


@pytest.mark.parametrize(
    ("c", "t", "k", "groups"),
    [(16, 48, 3, 1), (32, 48, 3, 2), (24, 24, 5, 24), (40, 24, 1, 1), (6, 28, 3, 1)],
    ids=["dense", "grouped", "depthwise-5x5", "pointwise", "narrow"],
)
def test_weight_relayouts_by_the_transpose_kernel(c, t, k, groups, monkeypatch):
    """Every weight re-layout through the blocked transpose kernel: the layouts equal
    PyTorch's permutes, and a layer's outputs and gradients match the reference."""
    torch.manual_seed(0)
    w = torch.randn(t, c // groups, k, k)
    shape, perm = tvm_l1.forward_weight_layout(*w.shape, groups)
    got = tvm_l1._forward_weight(w, groups, keep=False)
    assert torch.equal(got, w.reshape(shape).permute(perm))
    kinds = _kernel_kinds(monkeypatch)
    layer = Adder2d(c, t, k, 1, k // 2, 1, groups, bias=False, backend="tvm")
    x = torch.randn(2, c, 9, 9)
    if groups == c:  # the channel-vectorised depthwise kernels (the plane kernels need none)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    # the forward's and the input gradient's (a 1x1 input gradient's moves nothing)
    assert kinds.count("transpose") == (1 if k == 1 else 2), kinds
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(x2, w2, None, 1, k // 2, 1, groups)
    ref.backward(grad)
    _assert_matches(y, ref, x, x2, layer.weight, w2)


@pytest.mark.parametrize("same", [False, True], ids=["symmetric", "tf-same"])
@pytest.mark.parametrize("p", [1.0, 1.6])
def test_depthwise_plane_and_channel_kernels_agree(p, same, monkeypatch):
    """An NCHW input takes the plane kernels (padding, asymmetric 'same' included, inside
    the kernel), a channels-last one the channel-vectorised kernels (one per stride phase):
    same values and input and weight gradients, the reference's."""
    torch.manual_seed(0)
    pad = 0 if same else 2
    layer = Adder2d(16, 16, 5, 2, pad, groups=16, bias=False, p=p, backend="tvm", dynamic_same=same)
    kinds = _kernel_kinds(monkeypatch)
    x = torch.randn(2, 16, 12, 13)
    pads = layer.input_pads(x)
    assert (pads[2] != pads[3]) == same  # 'same' pads 1 top, 2 bottom here
    x2 = x.clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(F.pad(x2, pads), w2, None, 2, 0, 1, 16, p)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = torch.empty_like(x, memory_format=fmt).copy_(x).requires_grad_()
        layer.weight.grad = None
        y = layer(xi)
        y.backward(grad)
        _assert_matches(y, ref, xi, x2, layer.weight, w2, x_atol=1e-4 if p == 1 else 3e-4)
    suffix = "" if p == 1.0 else "_lp"
    convs = (k.removesuffix(suffix) for k in kinds if k != "transpose")  # weight re-layouts
    assert list(dict.fromkeys(convs)) == [
        "depthwise_forward_nchw",
        "depthwise_grad_input_nchw",
        "depthwise_forward",
        "depthwise_grad_input",
    ]


@pytest.mark.parametrize("backend", ["tvm", "torch"])
@pytest.mark.parametrize("same", [False, True], ids=["symmetric", "tf-same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_dense_conv_keeps_no_padded_copy_for_the_backward(stride, same, backend):
    """A padded dense conv, on the direct kernels or the row kernels, saves its input
    unpadded (the padding is a temporary of the forward and of the input gradient, which
    is cropped): the reference's values and gradients, NCHW and channels-last, and no
    saved tensor of the padded shape."""
    torch.manual_seed(0)
    layer = Adder2d(16, 24, 3, stride, 0 if same else 1, bias=False, backend=backend,
                    dynamic_same=same)  # fmt: skip
    x = torch.randn(2, 16, 11, 10)
    pads = layer.input_pads(x)
    assert any(pads)
    x2 = x.clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(F.pad(x2, pads), w2, None, stride, 0, 1, 1)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    saved: list[torch.Size] = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = torch.empty_like(x, memory_format=fmt).copy_(x).requires_grad_()
        layer.weight.grad = None
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.shape) or t, lambda t: t
        ):
            y = layer(xi)
        assert x.shape in saved and all(s[-2:] in (x.shape[-2:], (3, 3)) for s in saved)
        y.backward(grad)
        _assert_matches(y, ref, xi, x2, layer.weight, w2)


@pytest.mark.parametrize(
    "fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_strided_pointwise_conv_on_its_subsampled_input(fmt):
    """A 1x1 stride-2 conv at batch >= 8 runs a stride-1 kernel on the positions it reads:
    the reference's values and gradients (odd sizes: the last row and column dropped)."""
    torch.manual_seed(0)
    layer = Adder2d(16, 24, 1, 2, bias=False, backend="tvm")
    x = torch.randn(8, 16, 9, 7)
    x2 = x.clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(x2, w2, None, 2, 0, 1, 1)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    xi = torch.empty_like(x, memory_format=fmt).copy_(x).requires_grad_()
    y = layer(xi)
    y.backward(grad)
    _assert_matches(y, ref, xi, x2, layer.weight, w2)


def test_prepared_weights_follow_in_place_updates():
    """The weight re-layout cache must see optimizer steps (in-place updates)."""
    torch.manual_seed(0)
    layer = Adder2d(16, 16, 3, padding=1, backend="tvm")
    reference = Adder2d(16, 16, 3, padding=1, backend="torch")
    x = torch.randn(1, 16, 6, 6)
    layer(x)
    with torch.no_grad():
        layer.weight.add_(0.5)
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-3)


def test_inference_reuses_its_resolved_call_and_training_keeps_none():
    """Inference keeps one resolved kernel call per weight (reused for the same input
    shape, remade for another shape or after an in-place update, dropped with the
    weight); a training step keeps no call and no weight re-layout."""
    from adderize.kernels import weight_cache
    from adderize.kernels.adder_op import PLAN

    torch.manual_seed(0)
    layer = Adder2d(16, 24, 3, padding=1, bias=False, backend="tvm")
    reference = Adder2d(16, 24, 3, padding=1, bias=False, backend="torch")
    x, x2 = torch.randn(1, 16, 6, 6), torch.randn(2, 16, 5, 5)
    weight_cache.clear()
    layer(x.requires_grad_()).sum().backward()  # training: nothing kept
    assert weight_cache.size() == 0
    with torch.no_grad():
        layer(x)
        plan = weight_cache.peek(layer.weight, PLAN)
        assert plan is not None and weight_cache.size() == 2  # the call and its re-layout
        layer(x)
        assert weight_cache.peek(layer.weight, PLAN) is plan  # reused
        reference.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x2), reference(x2), rtol=1e-5, atol=1e-3)
        assert weight_cache.peek(layer.weight, PLAN) is not plan  # another shape: remade
        plan = weight_cache.peek(layer.weight, PLAN)
        layer.weight.add_(0.25)
        reference.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x2), reference(x2), rtol=1e-5, atol=1e-3)
        assert weight_cache.peek(layer.weight, PLAN) is not plan  # an in-place update: remade
    del layer
    assert weight_cache.size() == 0  # dropped with the weight


@pytest.mark.parametrize("out, groups", [(24, 1), (16, 16)], ids=["dense", "depthwise"])
def test_repeated_inference_skips_to_the_kept_call_until_anything_changes(out, groups, monkeypatch):
    """A layer's inference call like its last one runs the kept kernel call without the
    op's checks (op_forward is not reached), with the bias read live; a training call, a
    new shape, an in-place or ``.data`` weight update, an attribute set (p, blend) and
    autocast each take the full path, and every result matches the PyTorch reference."""
    torch.manual_seed(0)
    layer = Adder2d(16, out, 3, padding=1, groups=groups, backend="tvm")
    reference = Adder2d(16, out, 3, padding=1, groups=groups, backend="torch")
    x = torch.randn(1, 16, 6, 6)
    full = Adder2d.op_forward
    calls: list[int] = []

    def counted(self, x):
        calls.append(1)
        return full(self, x)

    monkeypatch.setattr(Adder2d, "op_forward", counted)

    def check(x, full_path):
        calls.clear()
        reference.load_state_dict(layer.state_dict())
        reference.p = layer.p
        with torch.no_grad():
            y = layer(x)
        assert len(calls) == full_path
        torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-3)

    layer(x.requires_grad_()).sum().backward()
    x = x.detach()
    check(x, 1)  # the first inference call
    check(x, 0)  # kept
    with torch.no_grad():
        layer.bias.add_(1.0)
    check(x, 0)  # the bias is read live
    check(torch.randn(2, 16, 5, 5), 1)  # another shape
    check(x, 1)
    with torch.no_grad():
        layer.weight.mul_(0.5)  # the version counter
    check(x, 1)
    layer.weight.data = torch.randn_like(layer.weight)  # new storage
    check(x, 1)
    layer.p = 1.5
    check(x, 1)
    check(x, 0)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        layer(x)
    assert calls == [1]
    buffer = io.BytesIO()
    torch.save(layer, buffer)  # the kept call is left out (not picklable)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x))
    layer.blend = 1.0  # the float layer: not the op
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.float_forward(x))
        torch.testing.assert_close(layer(x), layer.float_forward(x))


@pytest.mark.slow
def test_tuned_schedules_are_used_when_present(tmp_path, monkeypatch):
    """MetaSchedule tuning of one small kernel (builder workers pre-warmed: TVM's
    tensor-intrinsic import takes over a minute here), then a build that uses the record."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tvm_build.forget()
    w = Workload.of("conv_forward", 1, 16, 10, 10, 32, 3, 3, 1, 1, 1)
    assert tuned_module(w) is None  # nothing tuned yet
    database = tvm_l1.tune(w, trials=8)
    assert (database / "database_tuning_record.json").stat().st_size > 0
    assert tuned_module(w) is not None
    used = []
    monkeypatch.setattr(tvm_build, "tuned_module", lambda *a: used.append(a) or tuned_module(*a))
    torch.manual_seed(0)
    x, w = torch.randn(1, 16, 8, 8), torch.randn(32, 16, 3, 3)
    xp = F.pad(x, (1, 1, 1, 1))
    y = tvm_l1.conv_forward(xp, w, 1, 1, 1)
    assert used, "the kernel was not rebuilt against the tuning database"
    torch.testing.assert_close(y, adder2d_reference(xp, w), rtol=1e-5, atol=1e-3)


def test_workloads_lists_forward_and_backward_kernels_once():
    import adderize

    model = adderize.create_model("resnet18", num_classes=4)
    x = torch.randn(2, 3, 64, 64)  # 16x16 maps, then layers of few positions (rows kernels)
    tasks = tvm_l1.workloads(lambda: model(x).sum().backward())
    kinds = {t.kind for t in tasks}
    assert {"conv_forward_nchw", "conv_grad_input", "grad_a"} <= kinds
    assert len(tasks) == len(set(tasks))
    # batch size is part of a conv kernel's shape (the rows kernels' is batch x positions)
    assert all(t["n"] == 2 for t in tasks if t.kind != "grad_a")


def test_tune_command_tunes_each_new_kernel_and_respects_budgets(monkeypatch, capsys):
    from adderize.cli import main

    calls = []
    monkeypatch.setattr(tvm_l1, "tune", lambda task, trials: calls.append((task, trials)))
    first = []
    monkeypatch.setattr(tvm_l1, "tuned", lambda task: bool(first) and task == first[0])
    assert main(["tune", "resnet18", "--input-size", "1,3,32,32", "--trials", "3"]) == 0
    assert calls and all(trials == 3 for _, trials in calls)
    assert all(task.kind == "conv_forward_nchw" for task, _ in calls)  # forward only by default
    n_forward = len(calls)
    first.append(calls[0][0])  # now pretend the first one is tuned: it is skipped
    calls.clear()
    assert main(["tune", "resnet18", "--input-size", "1,3,32,32", "--train"]) == 2
    assert "BatchNorm needs a batch of at least 2" in capsys.readouterr().err
    assert main(["tune", "resnet18", "--input-size", "1,3,32,32"]) == 0
    assert first[0] not in [task for task, _ in calls] and len(calls) == n_forward - 1
    assert "1 already tuned" in capsys.readouterr().out
    calls.clear()
    assert main(["tune", "resnet18", "--input-size", "2,3,64,64", "--train"]) == 0
    assert {task.kind for task, _ in calls} >= {"conv_forward_nchw", "conv_grad_input", "grad_a"}
    calls.clear()
    assert main(["tune", "resnet18", "--input-size", "32", "--minutes", "0"]) == 0
    assert not calls and "time budget of 0.0 min reached" in capsys.readouterr().out
    assert main(["tune", "resnet18", "--trials", "0"]) == 2
    assert "argument --trials: must be >= 1, got 0" in capsys.readouterr().err


def test_kernel_cache_survives_concurrent_builds_and_killed_writes(tmp_path):
    code = (
        "import torch; from adderize.kernels import tvm_l1; torch.manual_seed(0); "
        "a, b = torch.randn(1, 11, 24), torch.randn(1, 16, 24); "
        "print(repr(float(tvm_l1.forward(a, b).sum())))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}

    def run(n: int) -> list[str]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(n)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        return [out for out, _ in outs]

    first = run(2)  # two processes build the same kernel at once
    assert first[0] == first[1]
    cache = tmp_path / "adderize" / "kernels"
    (so,) = cache.glob("forward-*.so")
    assert not list(cache.glob("*.tmp.so"))  # each writer renamed its own temporary file
    good_size = so.stat().st_size
    # a writer killed mid-write leaves its temporary file; a damaged final file is rebuilt
    (cache / f"{so.name}.12345.tmp.so").write_bytes(b"\x7fELF partial")
    so.write_bytes(so.read_bytes()[: good_size // 3])
    assert run(1) == first[:1]
    assert so.stat().st_size == good_size


_GRAD_CASES = [  # c, t, k, stride, same, groups, batch, h
    (16, 32, 1, 1, False, 1, 1, 1),  # squeeze-excite: a 1x1 conv of a 1x1 map
    (16, 32, 1, 1, False, 2, 3, 1),  # grouped, batched
    (16, 24, 1, 1, False, 1, 2, 8),  # pointwise, batched, 64 positions
    (16, 24, 3, 2, True, 1, 1, 8),  # asymmetric ('same') padding, stride 2
    (16, 32, 3, 1, False, 2, 2, 5),  # grouped 3x3, symmetric padding
]
# the matrix-product route is for ungrouped pointwise convs of more than one position (one
# position: test_one_position_pointwise_conv_takes_the_serial_kernels)
_GRAD_ROUTES = [
    (*case, route)
    for case in _GRAD_CASES
    for route in ("matmul", "rows", "conv")
    if route != "matmul" or (case[2:4], case[5], case[6] * case[7] ** 2 > 1) == ((1, 1), 1, True)
]


@pytest.mark.parametrize(("c", "t", "k", "stride", "same", "groups", "batch", "h", "route"),
                         _GRAD_ROUTES)  # fmt: skip
def test_direct_conv_weight_gradient_routes(c, t, k, stride, same, groups, batch, h, route):
    """A direct conv's eq. 23 weight gradient: a (batched) matrix product on NCHW memory
    (pointwise convs), one matrix product on the rows (few output positions; an ungrouped
    conv's input gradient then comes from the rows kernel too), or a conv weight gradient
    minus ``W sum G``. Each route gives the reference's gradients and is taken where its
    limits send it."""
    import adderize.kernels.adder_op as adder_mod

    torch.manual_seed(0)
    used = []
    rows, conv = adder_mod.l1_grad_b, torch.nn.grad.conv2d_weight
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adder_mod, "POINTWISE_MM_MIN_HW", 0 if route == "matmul" else 10**9)
        mp.setattr(adder_mod, "ROWS_BACKWARD_MAX", 10**9 if route == "rows" else 0)
        if batch == 1 and route != "matmul":  # batch 1 always takes the matrix product
            mp.setattr(adder_mod, "POINTWISE_MM_MIN_HW", 10**9)
            batch = 2
        mp.setattr(adder_mod, "l1_grad_b", lambda *a: used.append("rows") or rows(*a))
        mp.setattr(torch.nn.grad, "conv2d_weight", lambda *a: used.append("conv") or conv(*a))
        layer = Adder2d(c, t, k, stride, 0 if same else k // 2, groups=groups, bias=False,
                        backend="tvm", dynamic_same=same)  # fmt: skip
        x = torch.randn(batch, c, h, h, requires_grad=True)
        pads = layer.input_pads(x)
        x2 = x.detach().clone().requires_grad_()
        w2 = layer.weight.detach().clone().requires_grad_()
        ref = adder2d_reference(F.pad(x2, pads), w2, None, stride, 0, 1, groups)
        grad = torch.randn_like(ref)
        ref.backward(grad)
        y = layer(x)
        used.clear()
        kinds = {task.kind for task in tvm_build.workloads(lambda: y.backward(grad))}
    assert used == ([] if route == "matmul" else [route])
    rows_input = route == "rows" and groups == 1
    assert ("grad_a" in kinds) == rows_input
    # an NCHW pointwise conv's input gradient: positions vectorised, no layout copies
    nchw = k == 1 and stride == 1 and h * h % 16 == 0 and not rows_input
    assert ("pointwise_grad_input_nchw" in kinds) == nchw
    _assert_matches(y, ref, x, x2, layer.weight, w2, atol=1e-4)


@pytest.mark.parametrize(("batch", "hw", "t"), [(1, (8, 8), 24), (3, (4, 12), 6), (2, (5, 5), 24)])
def test_pointwise_convs_take_the_position_vectorised_kernel(batch, hw, t, monkeypatch):
    """An NCHW 1x1 conv whose maps hold a multiple of 16 positions runs its forward on the
    pointwise kernel (positions vectorised, the weight as it is), in training and
    inference; other maps keep the dense kernel. Output and gradients match the
    reference."""
    torch.manual_seed(0)
    layer = Adder2d(16, t, 1, bias=False, backend="tvm")
    x = torch.randn(batch, 16, *hw, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(x2, w2, None, 1, 0, 1, 1)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    kinds = _kernel_kinds(monkeypatch)
    y = layer(x)
    y.backward(grad)
    _assert_matches(y, ref, x, x2, layer.weight, w2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-3)
    forward = "pointwise_forward_nchw" if hw[0] * hw[1] % 16 == 0 else "conv_forward_nchw"
    assert kinds.count(forward) == 2 and kinds[0] == forward, kinds


@pytest.mark.parametrize(
    ("p", "t", "c"), [(1.0, 40, 24), (1.0, 6, 144), (1.0, 48, 7), (1.6, 40, 24)]
)
def test_one_position_pointwise_conv_takes_the_serial_kernels(p, t, c, monkeypatch):
    """A batch-1 squeeze-excite conv (1x1 on a 1x1 map) takes its training forward and
    eqs. 23 and 27 from the one-position kernels and no other (p = 1; channels a multiple
    of 8, of 16, and odd); l_p keeps the direct kernels. Output and gradients match the
    reference, also for an output gradient expanded from a sum (stride 0)."""
    torch.manual_seed(0)
    layer = Adder2d(c, t, 1, bias=False, p=p, backend="tvm")
    x = torch.randn(1, c, 1, 1, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = adder2d_reference(x2, w2, None, 1, 0, 1, 1, p)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    kinds = _kernel_kinds(monkeypatch)
    y = layer(x)
    y.backward(grad)
    one = ["one_position_forward", "one_position_backward"]
    assert (kinds == one) == (p == 1.0), kinds
    _assert_matches(y, ref, x, x2, layer.weight, w2, atol=1e-4)
    x3, w3 = x2.detach().requires_grad_(), w2.detach().requires_grad_()
    x.grad = layer.weight.grad = None
    layer(x).sum().backward()
    adder2d_reference(x3, w3, None, 1, 0, 1, 1, p).sum().backward()
    torch.testing.assert_close(x.grad, x3.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(layer.weight.grad, w3.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("k", "stride", "dilation", "same", "batch"), [
    (3, 1, 1, False, 2),  # 3x3: oneDNN's weight gradient
    (5, 1, 1, False, 1),
    (5, 2, 1, True, 3),  # asymmetric ('same') padding, stride 2, batched
    (5, 1, 2, False, 2),  # dilated
    (7, 2, 1, False, 1),
])  # fmt: skip
def test_depthwise_weight_gradient_routes(k, stride, dilation, same, batch):
    """A depthwise conv's eq. 23 weight gradient: oneDNN's conv weight gradient for 3x3,
    a grouped conv forward with the output gradient as its kernels above
    (:data:`DEPTHWISE_CONV_WEIGHT_GRAD_MAX_TAPS`), each minus ``W sum G``."""
    import adderize.kernels.adder_op as adder_mod

    torch.manual_seed(0)
    used = []
    conv = torch.nn.grad.conv2d_weight
    layer = Adder2d(12, 12, k, stride, 0 if same else dilation * (k // 2), dilation, groups=12,
                    bias=False, backend="tvm", dynamic_same=same)  # fmt: skip
    x = torch.randn(batch, 12, 11, 11, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    pads = layer.input_pads(x)
    ref = adder2d_reference(F.pad(x2, pads), w2, None, stride, 0, dilation, 12)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.grad, "conv2d_weight", lambda *a: used.append("onednn") or conv(*a))
        y = layer(x)
        y.backward(grad)
    big = k * k > adder_mod.DEPTHWISE_CONV_WEIGHT_GRAD_MAX_TAPS
    assert used == ([] if big else ["onednn"])
    _assert_matches(y, ref, x, x2, layer.weight, w2, atol=1e-4)


def test_a_cached_choice_no_longer_a_candidate_is_selected_again(tmp_path, monkeypatch):
    """A kernel in the disk cache whose recorded tile the candidate rules no longer offer
    (e.g. a max form below ``MAX_FORM_MIN_TERMS``) is built and selected again; one still
    offered is loaded."""
    from adderize.tvm_schedules.kinds import candidates

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tvm_build.forget()
    w = Workload.of("conv_forward_nchw", 1, 16, 8, 8, 16, 1, 1, 1, 1, 1)  # no max forms
    assert all(c.form not in ("max", "maxfma") for c in candidates(w))
    tvm_build.kernel(w)
    (label,) = (tmp_path / "adderize" / "kernels").glob("conv_forward_nchw-*.so.variant")
    built = []
    build = tvm_build.build
    monkeypatch.setattr(tvm_build, "build", lambda *a: built.append(a) or build(*a))
    for recorded, rebuilt in (("7x32/maxfma", True), (label.read_text(), False)):
        label.write_text(recorded)
        tvm_build.forget()
        built.clear()
        tvm_build.kernel(w)
        assert bool(built) == rebuilt
    tvm_build.forget()
