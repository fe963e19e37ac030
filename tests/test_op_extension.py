"""A new op is one layer class and one ``register_op`` call through the public API: this
file registers a toy ternary op with its own per-layer parameters and takes it through
conversion, the energy report (priced by its own counts), the search space, save/load
and compilation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import timm
import torch
import torch.nn.functional as F

import adderize
from adderize import OpConfig, OpMapping, OpSpec
from adderize.energy import energy_report
from adderize.nn import Conv2dLike
from adderize.passes import registered
from adderize.search import OpSpace


class TernaryConv2d(Conv2dLike):
    """Weights in {-1, 0, 1} times the layer's mean magnitude; |w| below ``threshold``
    times that mean is 0."""

    def __init__(self, *args, threshold: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold = threshold

    def op_forward(self, x):
        w = self.op_weight()
        scale = w.abs().mean()
        q = torch.sign(w) * (w.abs() > self.threshold * scale) * scale
        return F.conv2d(self.pad_input(x), q, self.bias, self.stride, 0, self.dilation, self.groups)


@dataclass(frozen=True)
class TernaryParams:
    threshold: float = 0.5

    def __post_init__(self):
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")


TERNARY = OpSpec(
    "ternary",
    conv2d=lambda module, source, **params: TernaryConv2d.from_float(module, **params),
    linear=None,
    needs_norm=False,
    description="ternary weights (toy op of the extension test)",
    layers=(TernaryConv2d,),
    counts=lambda macs, outputs: {"add": macs},  # a signed add per non-zero weight at most
    convention="1 signed add",
    weight_bits=2,
    params=TernaryParams,
)


@pytest.fixture
def ternary():
    with registered(TERNARY) as spec:  # removed again after the test
        yield spec


def _model():
    return timm.create_model("resnet10t", num_classes=3).eval()


def test_a_registered_op_converts_with_its_parameters(ternary):
    mapping = OpMapping(default=OpConfig("ternary", TernaryParams(threshold=0.25)))
    ann, report = adderize.adderize(_model(), mapping, return_report=True)
    layers = [m for m in ann.modules() if isinstance(m, TernaryConv2d)]
    assert layers and all(m.threshold == 0.25 for m in layers)
    replaced = [r for r in report.records if r.action == "replaced"]
    assert replaced and all("ternary(threshold=0.25)" in r.reason for r in replaced)
    assert ann(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="did you mean 'threshold'"):
        OpMapping.from_dict({"default": {"op": "ternary", "treshold": 0.1}})
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        OpMapping.from_dict({"default": {"op": "ternary", "threshold": 2.0}})


def test_a_registered_op_is_priced_by_its_own_counts_and_searched(ternary):
    size = (1, 3, 32, 32)
    model = _model()
    report = energy_report(adderize.adderize(model, "ternary"), size)
    priced = [r for r in report.layers if r.op == "ternary"]
    assert priced and all("mult" not in r.counts for r in priced)
    assert "ternary MAC = 1 signed add" in report.conventions
    space = OpSpace.from_model(model, size, 0.9, ops=("conv", "ternary"))
    assert tuple(space.ops) == ("conv", "ternary")
    everything = dict.fromkeys(space.layers, "ternary")
    assert space.costs.energy(everything) == pytest.approx(report.total_pj, rel=1e-9)
    assert space.costs.energy(everything) < space.costs.energy(dict.fromkeys(space.layers, "conv"))


def test_a_registered_op_saves_loads_and_compiles(ternary, tmp_path):
    model = adderize.create_model(
        "resnet10t", OpMapping(default={"op": "ternary", "threshold": 0.3}), num_classes=3
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    path = adderize.save(model, tmp_path / "ternary.safetensors")
    loaded = adderize.load(path).eval()
    thresholds = {m.threshold for m in loaded.modules() if isinstance(m, TernaryConv2d)}
    assert thresholds == {0.3}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    pytest.importorskip("tvm")
    from adderize.deploy.model import compile_model

    compiled, crep = compile_model(model, tuple(x.shape), check=True)
    assert compiled is not None and crep.max_abs_error < 1e-3


def test_training_hooks_come_from_the_op_record(ternary):
    """The adaptive learning rate and the l_p schedule act on the layers of ops that
    declare them (``OpSpec.adaptive_lr`` / ``lp_schedule``), not on a list of classes."""
    from adderize.train import adder_weights

    assert adder_weights(adderize.adderize(_model(), "ternary")) == []

    class ScaledTernaryConv2d(TernaryConv2d):
        pass

    with registered(
        replace(
            TERNARY,
            name="ternary_lr",
            conv2d=lambda module, source, **p: ScaledTernaryConv2d.from_float(module, **p),
            layers=(ScaledTernaryConv2d,),
            adaptive_lr=True,
        )
    ):
        ann = adderize.adderize(_model(), "ternary_lr")
        layers = [m for m in ann.modules() if isinstance(m, ScaledTernaryConv2d)]
        assert layers and adder_weights(ann) == [m.weight for m in layers]
