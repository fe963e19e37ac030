"""Op counting and energy: published MACs, the papers' counts, a hand-computed model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

import adderize
from adderize.cli import main
from adderize.energy import HOROWITZ_45NM, EnergyTable, cost_table, energy_report
from adderize.energy.cost import layer_counts
from adderize.energy.count import OpCount
from adderize.energy.tables import resolve_precision
from adderize.nn import Adder2d


@pytest.mark.parametrize(("name", "published"), [("resnet18", 1.8e9), ("resnet50", 4.1e9)])
def test_macs_match_published_figures(name, published):
    report = energy_report(timm.create_model(name), (1, 3, 224, 224))
    assert report.counting == "fx"
    assert abs(report.macs - published) / published < 0.02, report.macs


def _resnet50_v1() -> nn.Module:
    """The papers' ResNet-50 is He et al.'s v1 (stride in the first 1x1 conv of a stage);
    timm's is v1.5 (stride in the 3x3: 4.1 GMACs instead of 3.86)."""
    model = timm.create_model("resnet50")
    for stage in (model.layer2, model.layer3, model.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    return model


def test_resnet50_reproduces_the_papers_counts():
    """Universal Adder Neural Networks, ImageNet table: CNN 3.9G mul + 3.9G add;
    l1-AddNN 0 mul, 7.7G add (all conv/linear layers)."""
    model = _resnet50_v1()
    cnn = energy_report(model).op_totals(parametric_only=True)
    assert round(cnn["mult"] / 1e9, 1) == 3.9 and round(cnn["add"] / 1e9, 1) == 3.9
    all_adder = adderize.OpMapping(keep_first=False, keep_last=False)
    addnn = energy_report(adderize.adderize(model, all_adder)).op_totals(parametric_only=True)
    assert addnn.get("mult", 0) == 0
    assert round(addnn["add"] / 1e9, 1) == 7.7


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # bias
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.adder = Adder2d(4, 4, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        h = h + self.adder(h)  # residual add
        return self.fc(self.pool(h).flatten(1))


def test_hand_computed_tiny_model_exactly():
    report = energy_report(Tiny(), (1, 3, 5, 5), bits=32)
    by = {x.name: x for x in report.layers}
    assert by["conv"].macs == 100 * 27 and by["conv"].counts == {"mult": 2700, "add": 2800}
    assert by["bn"].counts == {"mult": 100, "add": 100}
    assert by["act"].counts == {"compare": 100}
    assert by["adder"].macs == 100 * 4 and by["adder"].counts == {"add": 800}
    assert by["add"].counts == {"add": 100}  # the residual
    assert by["pool"].counts == {"add": 4 * 24, "mult": 4}
    assert by["fc"].counts == {"mult": 12, "add": 15}
    # energy of the adder layer by hand: 800 adds at 0.9 pJ; memory: 16 fp32 weights from
    # DRAM (20 pJ/bit) + 100 in + 100 out fp32 activations in SRAM (5/32 pJ/bit)
    adder = by["adder"]
    assert adder.compute_pj == pytest.approx(800 * 0.9)
    assert adder.memory_pj == pytest.approx(16 * 32 * 20 + 200 * 32 * 5 / 32)
    assert adder.baseline_compute_pj == pytest.approx(400 * (3.7 + 0.9))
    assert adder.weight_bytes == 16 * 4 and adder.activation_bytes == 200 * 4
    assert by["act"].weight_bytes == 0 and by["act"].activation_bytes == 200 * 4
    assert report.total_pj == pytest.approx(sum(x.total_pj for x in report.layers))


def test_binary_and_shift_pricing_and_weight_bits():
    c = OpCount(
        "l",
        "conv2d",
        "Conv2d",
        op="binary",
        macs=1000,
        weight_numel=90,
        in_numel=200,
        out_numel=100,
        out_channels=10,
    )
    assert layer_counts(c) == {"xnor": 1000, "popcount": 1000, "mult": 100}
    assert layer_counts(c, "shift") == {"shift": 1000, "add": 1000}
    report_like = energy_report(
        adderize.adderize(
            Tiny(), adderize.OpMapping(default="shift", keep_first=False, keep_last=False)
        ),
        (1, 3, 5, 5),
    )
    conv = next(x for x in report_like.layers if x.name == "conv")
    assert conv.op == "shift" and conv.counts["shift"] == 2700
    assert conv.compute_pj == pytest.approx(2700 * 0.03 + 2800 * 0.9)  # fp32 shift: derived


def test_per_layer_precision_and_custom_yaml_table(tmp_path):
    report = energy_report(Tiny(), (1, 3, 5, 5), bits={"default": 32, "adder": 8})
    by = {x.name: x for x in report.layers}
    assert by["adder"].precision == "int8" and by["conv"].precision == "fp32"
    assert by["adder"].compute_pj == pytest.approx(800 * 0.03)
    data = HOROWITZ_45NM.to_dict()
    data["name"] = "mine"
    data["compute_pj"]["add"]["fp32"] = 2.0
    path = tmp_path / "table.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    mine = energy_report(Tiny(), (1, 3, 5, 5), table=path)
    assert mine.table == "mine"
    assert {x.name: x for x in mine.layers}["adder"].compute_pj == pytest.approx(1600)


def test_cost_table_sums_match_the_report_of_the_converted_model():
    model = timm.create_model("resnet18", num_classes=10)
    size = (1, 3, 64, 64)
    costs = cost_table(model, size)
    assert costs.costs.shape == (len(costs.layers), 4)
    rng = np.random.default_rng(0)
    for _ in range(3):
        choice = {n: costs.ops[rng.integers(4)] for n in costs.layers}
        mapping = adderize.OpMapping(
            default="conv", keep_first=False, keep_last=False, insert_norm=False
        )
        for name, op in choice.items():
            mapping.set_name(name, op)
        report = energy_report(adderize.adderize(model, mapping), size)
        assert costs.energy(choice) == pytest.approx(report.total_pj, rel=1e-9)
        idx = costs.index(choice)
        assert costs.energy(idx) == pytest.approx(report.total_pj, rel=1e-9)
    all_conv = energy_report(model, size)
    assert costs.energy({}) == pytest.approx(all_conv.total_pj, rel=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"bits must be one of \[8, 16, 32\].*got -8"):
        energy_report(Tiny(), (1, 3, 5, 5), bits=-8)
    with pytest.raises(ValueError, match=r"input_size must be 4 positive ints.*\(3, 5, 5\)"):
        energy_report(Tiny(), (3, 5, 5))
    with pytest.raises(ValueError, match="unknown op 'mul'; valid ops: conv, adder"):
        layer_counts(OpCount("l", "conv2d", "Conv2d", macs=1), "mul")
    with pytest.raises(ValueError, match=r"unknown op\(s\) \['mul'\]"):
        cost_table(Tiny(), (1, 3, 5, 5)).energy({"adder": "mul"})
    data = HOROWITZ_45NM.to_dict()
    del data["compute_pj"]["shift"]
    no_shift = EnergyTable.from_dict(data)
    shifted = adderize.adderize(Tiny(), adderize.OpMapping(default="shift", keep_first=False))
    with pytest.raises(ValueError, match="has no entry for 'shift' at 'fp32'"):
        energy_report(shifted, (1, 3, 5, 5), table=no_shift)
    with pytest.raises(ValueError, match="must be >= 0 pJ, got -1"):
        EnergyTable.from_dict({**data, "memory_pj_per_bit": {"sram": -1, "dram": 1}})
    with pytest.raises(ValueError, match=r"missing EnergyTable key\(s\) compute_pj"):
        EnergyTable.from_dict({"name": "x", "memory_pj_per_bit": {}})
    with pytest.raises(ValueError, match="no conv / linear layer"):
        energy_report(nn.Sequential(nn.ReLU()), (1, 3, 4, 4))
    assert resolve_precision(16) == "fp16" and resolve_precision("int8") == "int8"


def test_every_table_entry_cites_a_source():
    for op, per_precision in HOROWITZ_45NM.compute_pj.items():
        for precision in per_precision:
            assert f"{op}.{precision}" in HOROWITZ_45NM.sources or op in HOROWITZ_45NM.sources
    for level in HOROWITZ_45NM.memory_pj_per_bit:
        assert f"memory.{level}" in HOROWITZ_45NM.sources


class Untraceable(Tiny):
    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return super().forward(x)


def test_untraceable_models_are_counted_with_hooks_and_say_so():
    report = energy_report(Untraceable(), (1, 3, 5, 5))
    assert report.counting == "hooks" and "functional ops" in report.notes[0]
    fx_report = energy_report(Tiny(), (1, 3, 5, 5))
    assert report.macs == fx_report.macs


def test_report_json_and_cli(tmp_path, capsys):
    data = json.loads(energy_report(Tiny(), (1, 3, 5, 5)).to_json())
    assert data["totals"]["macs"] == 2700 + 400 + 12
    plot = tmp_path / "energy.png"
    assert main(["energy", "resnet18", "--input-size", "64", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "Adder2d" in out and "ratio" in out
    assert plot.stat().st_size > 10_000
    saved = adderize.save(
        adderize.create_model("resnet18", num_classes=5), tmp_path / "m.safetensors"
    )
    assert main(["energy", str(saved), "--bits", "8", "--json", "--input-size", "1,3,64,64"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["total_pj"] < totals["baseline_total_pj"]
    assert main(["energy", "resnet18", "--bits", "abc"]) == 2
    assert "bits must be one of" in capsys.readouterr().err


def test_counting_does_not_touch_the_model():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    energy_report(model, (1, 3, 5, 5))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert next(model.parameters()).device.type == "cpu"


def test_a_registered_op_is_priced_by_its_own_descriptor():
    """One place per op: a user's op declares its layers and counts; energy, the cost table
    and the search read them (no silent pricing as a conv)."""
    from adderize.nn import Conv2dLike
    from adderize.passes.registry import OpSpec, registered
    from adderize.search import OpSpace

    class TernaryConv2d(Conv2dLike):
        def op_forward(self, x):
            w = self.weight.sign() * (self.weight.abs() > 0.05)
            return torch.nn.functional.conv2d(self.pad_input(x), w, self.bias, self.stride)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    size = (1, 3, 8, 8)

    def build(m, source):
        return TernaryConv2d.from_float(m)

    with registered(OpSpec("ternary_undeclared", build, None, False, "no cost model")):
        ann = adderize.adderize(model, "ternary_undeclared")
        with pytest.raises(ValueError, match="TernaryConv2d is a converted layer that no"):
            energy_report(ann, size)
        with pytest.raises(ValueError, match="'ternary_undeclared' has no cost model"):
            OpSpace.from_model(model, size, 0.5, ops=("conv", "ternary_undeclared"))
    spec = OpSpec(
        "ternary", build, None, False, "ternary weights",
        layers=(TernaryConv2d,), counts=lambda macs, outputs: {"add": macs}, weight_bits=2,
    )  # fmt: skip
    with registered(spec):
        report = energy_report(adderize.adderize(model, "ternary"), size)
        (mid,) = [x for x in report.layers if x.name == "2"]
        macs = 8 * 4 * 4 * 8 * 9  # outputs x (in channels x kernel)
        assert mid.op == "ternary" and mid.counts == {"add": macs + 8 * 4 * 4}  # + bias
        assert mid.weight_bytes == 2 * 8 * 8 * 9 / 8
        space = OpSpace.from_model(model, size, 0.9, ops=("conv", "ternary"))
        assert space.costs.energy({"2": "ternary"}) == pytest.approx(report.total_pj, rel=1e-9)


def test_all_conv_baseline_counts_bias_adds_like_the_converted_totals():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    report = energy_report(model, (1, 3, 7, 7))  # a float model: as converted = as all-conv
    assert report.op_totals(baseline=True) == report.op_totals()
    assert report.op_totals(parametric_only=True, baseline=True) == report.op_totals(
        parametric_only=True
    )
