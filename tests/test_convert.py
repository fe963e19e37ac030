"""The conversion pass on hand-built models: mapping, first/last, BN insertion, graph cases."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import adderize
from adderize import OpMapping
from adderize.kernels.reference import adder2d_reference
from adderize.nn import Adder2d, AdderLinear, BinaryConv2d, ShiftConv2d, WithNorm


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.proj = nn.Conv2d(16, 16, 1)  # no norm after it: BN must be inserted
        self.fc1 = nn.Linear(16, 16)  # no norm after it
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(F.relu(self.bn0(self.stem(x))))
        x = F.relu(self.proj(x)).mean((2, 3))
        return self.fc(F.relu(self.fc1(x)))


def _records(report):
    return {r.name: r for r in report.records}


def test_default_conversion_keeps_first_and_last_by_graph_position():
    model = SmallNet()
    ann, report = adderize.adderize(model, return_report=True)
    rec = _records(report)
    assert rec["stem"].action == "kept" and "first layer (graph position)" in rec["stem"].reason
    assert rec["fc"].action == "kept" and "last layer (graph position)" in rec["fc"].reason
    for name in ("body.0", "body.3", "proj", "fc1"):
        assert rec[name].action == "replaced", name
    assert isinstance(ann.body[0], Adder2d) and isinstance(ann.body[3], Adder2d)
    assert type(ann.stem) is nn.Conv2d and type(ann.fc) is nn.Linear
    # BN inserted exactly where no normalisation follows
    assert {r.name for r in report.inserted} == {"proj.norm", "fc1.norm"}
    assert isinstance(ann.proj, WithNorm) and isinstance(ann.proj.op, Adder2d)
    assert isinstance(ann.fc1, WithNorm) and isinstance(ann.fc1.op, AdderLinear)
    assert type(ann) is SmallNet  # class and methods preserved
    assert type(model.body[0]) is nn.Conv2d  # the original is untouched (not inplace)
    x = torch.randn(2, 3, 8, 8)
    ann(x).sum().backward()
    assert ann.body[0].weight.grad is not None


def test_converted_weights_come_from_the_float_model():
    model = SmallNet()
    ann = adderize.adderize(model)
    assert torch.equal(ann.body[0].weight, model.body[0].weight)
    assert torch.equal(ann.proj.op.weight, model.proj.weight)


def test_report_table_and_json():
    _, report = adderize.adderize(SmallNet(), return_report=True)
    text = str(report)
    for word in ("module", "original", "action", "body.0", "Adder2d", "inserted", "tracing: fx"):
        assert word in text
    data = json.loads(report.to_json())
    assert data["tracing"] == "fx"
    assert len(data["records"]) == len(report.records)
    assert {r["action"] for r in data["records"]} == {"replaced", "kept", "inserted"}


def test_mapping_precedence_default_type_regex_name():
    mapping = (
        OpMapping(default="binary")
        .set_type("Linear", "adder")
        .set_regex(r"body\.\d", "shift")
        .set_name("body.3", "adder")
    )
    ann, report = adderize.adderize(SmallNet(), mapping, return_report=True)
    assert isinstance(ann.body[0], ShiftConv2d)  # regex beats default
    assert isinstance(ann.body[3], Adder2d)  # name beats regex
    assert isinstance(ann.proj, BinaryConv2d)  # default (binary needs no inserted BN)
    assert isinstance(ann.fc1.op, AdderLinear)  # type
    rec = _records(report)
    assert "regex" in rec["body.0"].reason and "name 'body.3'" in rec["body.3"].reason


def test_name_entry_overrides_keep_first_and_keep_to_preserve():
    ann = adderize.adderize(SmallNet(), OpMapping().set_name("stem", "adder"), keep=["body.0"])
    assert isinstance(ann.stem, Adder2d)
    assert type(ann.body[0]) is nn.Conv2d
    ann = adderize.adderize(SmallNet(), OpMapping(keep_first=False, keep_last=False))
    assert isinstance(ann.stem, Adder2d) and isinstance(ann.fc, WithNorm)


def test_insert_norm_can_be_disabled():
    ann, report = adderize.adderize(SmallNet(), OpMapping(insert_norm=False), return_report=True)
    assert not report.inserted and isinstance(ann.proj, Adder2d)


def test_op_mapping_yaml_round_trip(tmp_path):
    mapping = OpMapping(keep_last=False).set_default("shift").set_regex("a.*", "adder")
    assert mapping.default == "shift"
    mapping.set_type(nn.Linear, "conv")
    path = tmp_path / "ops.yaml"
    mapping.save(path)
    assert OpMapping.load(path) == mapping
    assert "version: 1" in path.read_text()


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ({"default": "mul"}, ValueError, "unknown op 'mul'; valid ops: conv, adder, binary"),
        ({"defualt": "adder"}, ValueError, "unknown key 'defualt' .did you mean 'default'"),
        ({"regex": {"(": "adder"}}, ValueError, "invalid regex"),
        ({"version": 9}, ValueError, "version 9 is not supported"),
        ({"keep_first": "yes"}, TypeError, "keep_first must be true/false"),
        ({"default": {"op": "binary", "p": 2}}, ValueError, "op 'binary' takes no parameters"),
        ({"default": {"op": "adder", "q": 2}}, ValueError, "valid AdderParams keys: p"),
    ],
)
def test_op_mapping_rejects_bad_input(data, error, match):
    with pytest.raises(error, match=match):
        OpMapping.from_dict(data)


def test_bad_inputs_name_the_value_and_the_choices():
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module, got str"):
        adderize.adderize("resnet18")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown op 'xnor'"):
        adderize.adderize(SmallNet(), "xnor")
    with pytest.raises(ValueError, match=r"regex 'layer4\.\*' matches no conv/linear layer"):
        adderize.adderize(SmallNet(), OpMapping().set_regex(r"layer4.*", "conv"))
    with pytest.raises(ValueError, match=r"'body\.9'.*did you mean \['body\.3', 'body\.0'\]"):
        adderize.adderize(SmallNet(), keep=["body.9"])
    with pytest.raises(ValueError, match=r"type 'Conv3d' matches no layer.*'Conv2d', 'Linear'"):
        adderize.adderize(SmallNet(), OpMapping().set_type("Conv3d", "adder"))
    with pytest.raises(ValueError, match=r"has no nn\.Conv2d / nn\.Linear layer"):
        adderize.adderize(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)))


class DoubledConv(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


class WithCustomConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.custom = DoubledConv(4, 4, 3)
        self.conv = nn.Conv2d(4, 4, 3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.conv(self.custom(self.stem(x))))


def test_skips_are_reported_and_strict_raises_before_any_change():
    model = WithCustomConv()
    _, report = adderize.adderize(model, return_report=True)
    rec = _records(report)
    assert rec["custom"].action == "skipped"
    assert "overrides nn.Conv2d.forward" in rec["custom"].reason
    assert [r.name for r in report.unmet] == ["custom"]
    with pytest.raises(ValueError, match=r"(?s)strict=True: 1 layer\(s\).*custom \(DoubledConv\)"):
        adderize.adderize(model, strict=True, inplace=True)
    assert type(model.conv) is nn.Conv2d  # nothing changed


@pytest.mark.parametrize("cls_name", ["StdConv2d", "ScaledStdConv2d", "ScaledStdConv2dSame"])
@pytest.mark.parametrize("op", ["adder", "binary", "shift"])
def test_weight_standardised_convs_convert_and_keep_the_standardisation(cls_name, op):
    import timm.layers

    torch.manual_seed(0)
    std = getattr(timm.layers, cls_name)(4, 6, 3, stride=2)
    if hasattr(std, "gain"):
        with torch.no_grad():
            std.gain.uniform_(0.5, 2.0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), std, nn.BatchNorm2d(6), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    conv, report = adderize.adderize(net, op, return_report=True)
    assert _records(report)["1"].action == "replaced"
    layer = conv[1]
    sd = layer.state_dict()  # the replaced layer's keys and shapes (binary adds its threshold)
    assert all(sd[k].shape == v.shape for k, v in std.state_dict().items())
    # the op computes with exactly the weight timm's layer convolves with
    w = std.weight.reshape(6, -1)
    var = w.var(1, unbiased=False, keepdim=True)
    ref = (w - w.mean(1, keepdim=True)) / torch.sqrt(var + std.eps)
    if hasattr(std, "gain"):
        ref = ref * (std.gain * std.scale).view(-1, 1)
    torch.testing.assert_close(layer.op_weight(), ref.reshape_as(std.weight))
    # function-preserving mode reproduces the float model, gradients reach weight and gain
    kept = adderize.adderize(net, op, preserve=True).eval()
    torch.testing.assert_close(kept(x), net(x), rtol=1e-5, atol=1e-6)
    conv.train()(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    if hasattr(std, "gain"):
        assert layer.gain.grad is not None and layer.gain.grad.abs().sum() > 0


class Lenet(nn.Module):
    """Flattens with ``.view``: needs a contiguous NCHW output from its last conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 6, 3)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.c3(F.relu(self.c2(F.relu(self.c1(x)))))
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


@pytest.mark.parametrize("op", ["adder", "binary", "shift"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_converted_layers_return_what_the_replaced_layer_would(op, dtype):
    torch.manual_seed(0)
    net = Lenet().to(dtype)
    conv = adderize.adderize(net, OpMapping(default=op, insert_norm=False))
    x = torch.randn(2, 1, 10, 10, dtype=dtype)
    assert conv(x).shape == (2, 3)  # .view() works: every layer returned contiguous NCHW
    for name in ("c2", "c3"):
        layer, ref = getattr(conv, name), getattr(net, name)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xi = torch.randn(2, layer.in_channels, 7, 7, dtype=dtype).contiguous(memory_format=fmt)
            y, r = layer(xi), ref(xi)
            assert y.shape == r.shape and y.dtype == r.dtype == dtype and y.device == r.device
            assert y.is_contiguous(memory_format=fmt) == r.is_contiguous(memory_format=fmt)
            assert y.is_contiguous() == r.is_contiguous()


def test_inserted_norm_shows_the_parent_the_replaced_layer():
    net = SmallNet()
    conv = adderize.adderize(net, OpMapping(keep_first=False, keep_last=False))
    wrapped = [(n, m) for n, m in conv.named_modules() if isinstance(m, WithNorm)]
    assert wrapped
    for name, m in wrapped:
        orig = net.get_submodule(name)
        assert m.weight is m.op.weight and m.weight.shape == orig.weight.shape
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "in_features"):
            if hasattr(orig, attr):
                assert getattr(m, attr) == getattr(orig, attr)
        with pytest.raises(AttributeError, match="no_such_attribute"):
            m.no_such_attribute  # noqa: B018
    # the state dict keeps the op under .op and the inserted norm under .norm
    assert any(k.endswith(".op.weight") for k in conv.state_dict())


def test_converting_twice_is_a_no_op_with_reasons():
    ann = adderize.adderize(SmallNet())
    _, report = adderize.adderize(ann, return_report=True, strict=True)
    assert not report.replaced
    assert any("already multiplication-free" in r.reason for r in report.kept)


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.inp(x)
        h, _ = self.attn(h, h, h)
        return self.out(self.mid(h))


def test_layers_used_functionally_by_their_parent_are_not_swapped():
    ann, report = adderize.adderize(WithAttention(), return_report=True)
    rec = _records(report)
    assert rec["attn.out_proj"].action == "skipped"
    assert "uses the weights directly" in rec["attn.out_proj"].reason
    assert type(ann.attn.out_proj) is not AdderLinear
    assert isinstance(ann.mid.op, AdderLinear)
    assert ann(torch.randn(2, 5, 4)).shape == (2, 5, 3)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(6, 2, 3, 3))
        self.b = nn.Parameter(torch.randn(6))
        self.register_buffer("blur", torch.ones(6, 1, 3, 3) / 9)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        x = self.bn(F.conv2d(x, self.w, self.b, stride=1, padding=1, groups=2))
        x = F.conv2d(x, self.blur, padding=1, groups=6)
        return self.head(x)


def test_functional_calls_on_parameters_are_rewritten():
    torch.manual_seed(0)
    model = Functional().eval()
    ann, report = adderize.adderize(model, return_report=True)
    rec = _records(report)
    assert rec["w"].action == "replaced" and rec["w"].original == "F.conv2d"
    assert rec["blur"].action == "skipped" and "fixed buffer" in rec["blur"].reason
    assert isinstance(ann, fx.GraphModule) and "GraphModule" in report.result_type
    assert "w" not in dict(ann.named_parameters())  # the old parameter is gone
    x = torch.randn(2, 3, 6, 6)
    h = model.stem(x)
    expected = adder2d_reference(h, model.w, model.b, padding=1, groups=2)
    expected = model.head(F.conv2d(model.bn(expected), model.blur, padding=1, groups=6))
    torch.testing.assert_close(ann(x), expected)
    assert not report.inserted  # a BN follows the functional conv


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = x * 2
        return self.c(self.b(self.bn(self.a(x))))


def test_untraceable_models_fall_back_to_module_walk_and_say_so():
    ann, report = adderize.adderize(Untraceable(), return_report=True)
    assert report.tracing == "module-walk" and "could not trace" in report.note
    assert "module-walk" in report.summary()
    assert type(ann.a) is nn.Conv2d and type(ann.c) is nn.Conv2d  # first/last by order
    assert isinstance(ann.b, WithNorm)  # next sibling is not a norm
    assert ann(torch.randn(1, 3, 7, 7)).shape == (1, 2, 3, 3)


def test_converted_model_state_dict_and_torch_save():
    ann = adderize.adderize(SmallNet())
    fresh = adderize.adderize(SmallNet())
    fresh.load_state_dict(ann.state_dict())
    buf = io.BytesIO()
    torch.save(ann, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(2, 3, 8, 8)
    ann.eval(), loaded.eval(), fresh.eval()
    torch.testing.assert_close(loaded(x), ann(x))
    torch.testing.assert_close(fresh(x), ann(x))


class WithConv1d(nn.Module):
    """ECA-style channel attention: a Conv1d over the pooled channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        gate = self.eca(x.mean((2, 3)).unsqueeze(1)).sigmoid().squeeze(1)
        return self.head((x * gate[:, :, None, None]).mean((2, 3)))


def test_conv1d_layers_convert_with_a_batchnorm1d_and_ops_without_one_skip():
    from adderize.passes.registry import OpSpec, get_op, registered

    torch.manual_seed(0)
    net = WithConv1d().eval()
    x = torch.randn(2, 3, 8, 8)
    conv, report = adderize.adderize(net, return_report=True)
    assert type(conv.eca.op).__name__ == "Adder1d" and isinstance(conv.eca.norm, nn.BatchNorm1d)
    assert conv.train()(x).shape == (2, 2)
    torch.testing.assert_close(adderize.adderize(net, preserve=True).eval()(x), net(x))
    adder = get_op("adder")
    with registered(OpSpec("adder2d_only", adder.conv2d, adder.linear, True, "no 1-D layer")):
        _, report = adderize.adderize(net, "adder2d_only", return_report=True)
    rec = _records(report)["eca"]
    assert rec.action == "skipped" and rec.reason == "op 'adder2d_only' has no conv1d layer"


class FixedStem(nn.Module):
    """A fixed functional filter on the input (a DCT or blur stem, as csatv2) before the
    first trained convs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dct", torch.randn(4, 3, 2, 2))
        self.a, self.b = nn.Conv2d(4, 8, 3), nn.Conv2d(4, 8, 3)
        self.mid = nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = F.conv2d(x, self.dct, stride=2)
        x = self.mid(self.a(x) + self.b(x))
        return self.head(x.mean((2, 3)))


def test_fixed_filters_do_not_count_as_the_first_layer():
    _, report = adderize.adderize(FixedStem(), return_report=True)
    rec = _records(report)
    assert rec["dct"].action == "skipped" and "fixed buffer" in rec["dct"].reason
    for name in ("a", "b"):  # the first trained layers: both read the (filtered) input
        assert rec[name].action == "kept" and "first layer" in rec[name].reason
    assert rec["mid"].action == "replaced"


class OptionalArg(nn.Module):
    """Hiera-style: the head runs only when an optional argument keeps its default."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mid, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

    def forward(self, x, mask=None):
        x = self.mid(self.stem(x))
        if mask is None:
            return self.head(x.mean((2, 3)))
        return x


def test_tracing_keeps_optional_arguments_at_their_defaults():
    _, report = adderize.adderize(OptionalArg(), return_report=True)
    rec = _records(report)
    assert rec["head"].action == "kept" and "last layer" in rec["head"].reason
    assert rec["mid"].action == "replaced"


class ComputedBias(nn.Module):
    """BEiT-style qkv: ``F.linear`` with a bias concatenated at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.qkv = nn.Linear(8, 12, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        return self.head(F.linear(self.stem(x), self.qkv.weight, bias))


def test_functional_linear_with_a_computed_bias_converts():
    torch.manual_seed(0)
    net = ComputedBias().eval()
    x = torch.randn(5, 6)
    conv, report = adderize.adderize(net, return_report=True)
    assert _records(report)["qkv"].action == "replaced"
    assert isinstance(conv, fx.GraphModule) and isinstance(conv.qkv_adder.op, AdderLinear)
    assert conv.qkv_adder.op.bias is None  # the computed bias is added after the layer
    kept = adderize.adderize(net, preserve=True).eval()
    torch.testing.assert_close(kept(x), net(x))
    conv.train()(x).sum().backward()
    assert net.q_bias.grad is None and conv.q_bias.grad is not None  # it still trains
