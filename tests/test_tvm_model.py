"""Whole-model TVM compilation (Relax): outputs match PyTorch, libraries reload, CUDA builds."""

from __future__ import annotations

import pytest
import torch

import adderize
from adderize.kernels import tvm_l1
from adderize.train import recalibrate_bn

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(not tvm_l1.available(), reason="TVM unavailable"),
]


def _calibrated(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Random-init adder models need real BN statistics, or every output is the bias."""
    torch.manual_seed(0)
    recalibrate_bn(model, [torch.randn(8, 3, size, size) for _ in range(2)])
    return model.eval()


def test_resnet18_compiles_matches_pytorch_and_reloads(tmp_path):
    from adderize.deploy import CompiledModel, compile_model

    torch.manual_seed(0)  # random-init adder nets can be input-independent; this one is not
    model = _calibrated(adderize.create_model("resnet18", num_classes=10), 128)
    _, report = compile_model(model, (1, 3, 128, 128), out=tmp_path / "r18.so")
    assert len(report.adder_kernels) == 19 and report.max_abs_error is not None
    assert [k["kind"] for k in report.kernels].count("conv_mac_forward") == 1  # the stem
    assert report.max_abs_error < 1e-4
    x1, x2 = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        y1, y2 = model(x1), model(x2)
    assert (y1 - y2).abs().max() > 1e-3, "outputs must depend on the input for the check to bite"
    loaded = CompiledModel.load(tmp_path / "r18.so")
    torch.testing.assert_close(loaded(x1), y1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded(x2), y2, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"compiled for input \(1, 3, 128, 128\)"):
        loaded(torch.randn(2, 3, 128, 128))


def test_depthwise_and_adder_linear_layers_compile():
    """Depthwise (NHWC kernel), pointwise (positions vectorised), grouped-by-8, biased and
    linear adder layers; compared with a float64 run of the same model (the float32
    PyTorch error is the yardstick)."""
    import copy

    from torch import nn

    from adderize.deploy import compile_model

    net = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, groups=2, bias=True), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 11 * 11, 64), nn.BatchNorm1d(64), nn.Linear(64, 10),
    )  # fmt: skip
    model = adderize.adderize(net, adderize.OpMapping(keep_last=True))
    model = _calibrated(model, 26)
    compiled, report = compile_model(model, (1, 3, 26, 26))
    kinds = [k["kind"] for k in report.kernels]
    pointwise = "pointwise_forward_nchw"  # 24 x 24 positions
    assert kinds == [
        "conv_mac_forward",
        "depthwise_forward",
        pointwise,
        "conv_forward_nchw",
        "forward",
    ]
    x = torch.randn(1, 3, 26, 26)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double()).float()
        eager_error = (model(x) - exact).abs().max()
    assert (compiled(x) - exact).abs().max() <= 2 * eager_error + 1e-6


@pytest.mark.parametrize("form", ["fma", "maxfma"])
def test_compiled_model_takes_the_chosen_inner_loop_accumulated_by_adds(form, monkeypatch):
    """Where the training kernels chose an FMA form, the compiled model builds its tile with
    the same inner loop accumulated by adds (``abs`` / ``max``: no 1.0 input, no
    contraction), and matches PyTorch."""
    from torch import nn

    from adderize.deploy import compile_model, relax_ops
    from adderize.tvm_schedules import build as tvm_build
    from adderize.tvm_schedules import cpu, kinds

    net = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
    )  # fmt: skip
    model = _calibrated(adderize.adderize(net), 14)
    x = torch.randn(1, 3, 14, 14)
    with torch.no_grad():
        want = model(x)  # the eager kernels are built now, before schedules are counted
    chosen, built = [], []

    def variant(w):
        if w.kind != "conv_forward_nchw":
            return None
        lead = kinds.candidates(w)[0]
        chosen.append(cpu.Variant(lead.rows, lead.cols, lead.cols_outer, form))
        return chosen[-1]

    monkeypatch.setattr(tvm_build, "variant", variant)
    schedule = kinds.schedule
    monkeypatch.setattr(
        relax_ops, "schedule", lambda *a, **k: built.append(k.get("variant")) or schedule(*a, **k)
    )
    compiled, _ = compile_model(model, (1, 3, 14, 14))
    plain = {"fma": "abs", "maxfma": "max"}[form]
    assert len(chosen) == 2 and [v.form for v in built if v is not None] == [plain, plain]
    torch.testing.assert_close(compiled(x), want, rtol=1e-4, atol=1e-4)


def test_cuda_build_compiles_without_a_gpu():
    from adderize.deploy import compile_model

    model = adderize.create_model("resnet18", num_classes=10).eval()
    compiled, report = compile_model(model, (1, 3, 64, 64), target="cuda")
    assert compiled is None and len(report.adder_kernels) == 19


def test_bad_input_is_named():
    from adderize.deploy import compile_model

    model = adderize.create_model("resnet18", num_classes=10).eval()
    with pytest.raises(ValueError, match="target must be one of cpu, cuda, got 'metal'"):
        compile_model(model, (1, 3, 64, 64), target="metal")
    model.layer1[0].conv1.p = 1.5
    with pytest.raises(ValueError, match="p = 1 adder layers"):
        compile_model(model, (1, 3, 64, 64))


def test_compile_and_run_commands(tmp_path, capsys):
    from adderize.cli import main

    saved = adderize.save(
        _calibrated(adderize.create_model("resnet18", num_classes=10), 128), tmp_path / "m"
    )
    lib = tmp_path / "m.so"
    assert main(["compile", str(saved), "--input-size", "1,3,128,128", "--out", str(lib)]) == 0
    out = capsys.readouterr().out
    assert "19 adder layers" in out and "max |TVM - PyTorch|" in out
    assert main(["run", str(lib), "--repeat", "2"]) == 0
    assert "median" in capsys.readouterr().out
    assert main(["run", str(lib), "--input-size", "64"]) == 2
    assert "compiled for input (1, 3, 128, 128)" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "none.so")]) == 2


def test_compile_int8_model_matches_the_int8_pytorch_model(tmp_path, capsys):
    """--precision int8: every adder layer on the byte-SAD kernel inside the Relax build,
    checked against the quantized PyTorch model; calibration inputs from a .npy file."""
    import numpy as np

    from adderize.cli import main

    saved = adderize.save(
        _calibrated(adderize.create_model("resnet18", num_classes=10), 32), tmp_path / "m"
    )
    inputs = tmp_path / "calib.npy"
    np.save(inputs, np.random.default_rng(0).standard_normal((6, 3, 32, 32), dtype=np.float32))
    lib = tmp_path / "m8.so"
    args = ["compile", str(saved), "--input-size", "1,3,32,32", "--out", str(lib)]
    assert main([*args, "--precision", "int8", "--calibrate", str(inputs)]) == 0
    out = capsys.readouterr().out
    assert "int8: 19 adder layer(s) quantized, 0 kept" in out
    assert "19 int8 adder layers" in out and "max |TVM - PyTorch|" in out  # within --tolerance
    assert main(["run", str(lib), "--repeat", "2"]) == 0
    # bad calibration files are named, never unpickled
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 16, 16), dtype=np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad, msg in (
        ("wrong.npy", "inputs of shape (N, 3, 32, 32)"),
        ("obj.npy", "not a readable"),
    ):
        assert main([*args, "--precision", "int8", "--calibrate", str(tmp_path / bad)]) == 2
        assert msg in capsys.readouterr().err
    assert main([*args, "--precision", "int8", "--target", "cuda"]) == 2
    assert "compiles for --target cpu" in capsys.readouterr().err


def test_compile_binary_model_uses_the_packed_kernel():
    """Binary layers compile to the XNOR + popcount kernel, their input packed in the graph
    (channels not a multiple of 32 included); the build matches PyTorch."""
    from adderize.deploy import compile_model

    torch.manual_seed(0)
    model = adderize.create_model("resnet10t", num_classes=10, ops="binary")
    model.train()
    model(torch.randn(8, 3, 32, 32))  # a training forward sets the input thresholds
    _, report = compile_model(model.eval(), (1, 3, 32, 32))
    kinds = [k["kind"] for k in report.adder_kernels]
    assert kinds and set(kinds) == {"binary_conv_forward"}, kinds
    assert f"{len(kinds)} binary layers" in report.summary()
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4


def test_int8_adder_conv_matches_integer_reference_and_float_layer():
    from adderize.deploy.quant import SharedGrid, calibrate, int8_adder_conv2d
    from adderize.nn import Adder2d

    torch.manual_seed(0)
    layer = Adder2d(24, 16, 3, stride=2, padding=1)
    x = torch.randn(2, 24, 11, 11)
    grid = calibrate(layer, layer, [x])
    assert isinstance(grid, SharedGrid) and 0 <= grid.zero_point <= 255
    y = int8_adder_conv2d(x, layer, grid)
    # exact against a PyTorch integer computation on the same grid
    xq = grid.quantize(layer.pad_input(x)).int()
    wq = grid.quantize(layer.weight.detach()).int()
    cols = torch.nn.functional.unfold(xq.float(), 3, stride=2).round().int()  # [N, C*9, L]
    ref = (cols.unsqueeze(1) - wq.reshape(1, 16, -1, 1)).abs().sum(2).reshape(2, 16, 6, 6)
    torch.testing.assert_close(y, -grid.scale * ref.float() + layer.bias.view(1, -1, 1, 1))
    # and close to the float layer: each |x - w| term is off by at most one step
    with torch.no_grad():
        err = (y - layer(x)).abs().max()
    assert err <= grid.scale * 24 * 9
    with pytest.raises(ValueError, match="groups=1"):
        int8_adder_conv2d(x, Adder2d(24, 24, 3, groups=2), grid)


@pytest.mark.parametrize("form", ["sad", "plain"])
def test_int8_kernel_forms_match_integer_reference(form):
    """The byte-SAD (psadbw) tile and the portable tile compute the same integer sums as
    PyTorch; the SAD form's assembly holds the instruction (x86)."""
    import tvm

    from adderize.tvm_schedules import cpu, int8
    from adderize.tvm_schedules.kinds import Workload, schedule
    from adderize.tvm_schedules.target import llvm_target

    group = int8.sad_group()
    if form == "sad" and not group:
        pytest.skip("no byte-SAD instruction on this CPU")
    group = group or 4
    c = 2 * 8 * group  # two channel chunks
    shape = (2, 9, 9, c, 6, 3, 3, 2, 1, group)
    variant = cpu.Variant(2, 3, False, form)
    w = Workload.of("int8_conv_forward", *shape)
    lib = tvm.compile(schedule(w, variant=variant), llvm_target())
    asm = lib.mod.inspect_source("asm")
    assert ("psadbw" in asm) == (form == "sad")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 9, 9, c), dtype=torch.uint8, generator=gen)
    w = torch.randint(0, 256, (6, 3, 3, c), dtype=torch.uint8, generator=gen)
    out = torch.empty(2, 4, 4, 6, dtype=torch.int32)
    lib["main"](x, w, out)
    cols = torch.nn.functional.unfold(x.permute(0, 3, 1, 2).double(), 3, stride=2)
    ref = (cols.unsqueeze(1) - w.permute(0, 3, 1, 2).double().reshape(1, 6, -1, 1)).abs().sum(2)
    assert torch.equal(out.permute(0, 3, 1, 2).reshape(2, 6, 16).double(), ref)


def test_quantize_model_int8_layers_match_their_reference_and_report_the_rest():
    from adderize.deploy.quant import Int8Adder2d, quantize_model
    from adderize.nn import Adder2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 20, 3, padding=1),
        Adder2d(20, 16, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        Adder2d(16, 16, 3, padding=1, groups=16),  # depthwise: stays fp32
        Adder2d(16, 24, 1, stride=2),
        Adder2d(24, 8, 3, p=2.0),  # l2: stays fp32
    ).eval()
    batches = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    q, report = quantize_model(model, batches)
    assert report.quantized == ["1", "5"]
    assert set(report.kept) == {"4", "6"}
    assert "groups=16" in report.kept["4"] and "p = 2" in report.kept["6"]
    assert isinstance(model[1], Adder2d)  # the original is untouched
    x = torch.randn(3, 3, 12, 12)
    h = q[0](x)
    layer = q[1]
    assert isinstance(layer, Int8Adder2d)
    assert torch.equal(layer(h), layer.reference(h))  # exact: integer sums below 2**24
    with torch.no_grad():
        y, y8 = model(x), q(x)
    # each |x - w| term is off by at most one grid step; measured well inside that bound
    assert (y8 - y).abs().max() < 0.05 * y.abs().max()
    with pytest.raises(ValueError, match="calibration batch"):
        quantize_model(model, [])


def test_compile_tunes_first_when_asked(tmp_path, monkeypatch, capsys):
    """--tune-trials runs MetaSchedule on the model's untuned forward kernels, then builds
    (tuning itself is covered by the slow test in test_kernels.py)."""
    from adderize.cli import main

    calls = []
    monkeypatch.setattr(tvm_l1, "tuned", lambda task: False)
    monkeypatch.setattr(tvm_l1, "tune", lambda task, trials: calls.append((task, trials)))
    lib = tmp_path / "m.so"
    args = ["compile", "resnet18", "--num-classes", "10", "--input-size", "1,3,64,64"]
    assert main([*args, "--tune-trials", "3", "--out", str(lib)]) == 0
    assert len(calls) == len({c[0] for c in calls}) > 0 and all(t == 3 for _, t in calls)
    kinds = ("conv_forward_nchw", "depthwise_forward", "forward")
    assert all(task.kind in kinds for task, _ in calls)
    assert lib.is_file() and "adder kernels" in capsys.readouterr().out


@pytest.mark.parametrize(("cin", "padding", "stride"), [(40, 1, 1), (64, 1, 2), (24, 0, 1)])
def test_bit_packed_binary_conv_matches_the_layer(cin, padding, stride):
    """XNOR + popcount over 32-channel words (channels not a multiple of 32, zero padding
    masked out) equals BinaryConv2d's float computation."""
    from adderize.deploy.quant import binary_conv2d
    from adderize.nn import BinaryConv2d

    torch.manual_seed(0)
    layer = BinaryConv2d(cin, 32, 3, padding=padding, stride=stride, bias=True)
    layer(torch.randn(4, cin, 9, 9))  # a training forward initialises the threshold
    layer.eval()
    x = torch.randn(2, cin, 9, 9)
    with torch.no_grad():
        expected = layer(x)
    torch.testing.assert_close(binary_conv2d(x, layer), expected, rtol=1e-5, atol=1e-5)


def test_binary_and_shift_layers_compile_with_the_adder_ones():
    """Binary layers run on the packed XNOR kernel; shift layers export as power-of-two
    weight ops plus a conv on the direct-conv kernel, the weight transform folded at build
    time."""
    from adderize.deploy import compile_model

    ops = (
        adderize.OpMapping(default="adder")
        .set_regex(r"layer2\..*", "binary")
        .set_regex(r"layer3\..*", "shift")
    )
    torch.manual_seed(0)
    model = _calibrated(adderize.create_model("resnet18", ops, num_classes=10), 128)
    _, report = compile_model(model, (1, 3, 128, 128))
    kinds = [k["kind"] for k in report.adder_kernels]
    assert kinds.count("binary_conv_forward") == 5 and len(kinds) == 9 + 5
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4
