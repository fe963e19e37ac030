"""Rounding of shift weights with error feedback (adderize.train.gptq): the grid, the
output error against rounding each weight alone, groups, dead inputs, the conversion."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import adderize
from adderize.nn import ShiftConv2d
from adderize.nn.shift import round_power_of_two
from adderize.train.anneal import blend_layers
from adderize.train.gptq import _gptq, nearest_power_of_two, round_shift_weights


def test_nearest_power_of_two_is_the_nearest_grid_value():
    torch.manual_seed(0)
    w = torch.cat([torch.randn(2000) * 3, torch.tensor([0.0, 0.75, -1.5, 1e-9, 40.0])])
    grid = torch.exp2(torch.arange(-6, 3).double())
    got = nearest_power_of_two(w, -6, 2)
    dist = (w.double().abs().unsqueeze(1) - grid).abs()
    want = torch.sign(w) * grid[dist.argmin(1)].float()
    assert torch.equal(got[w != 0.75], want[w != 0.75])  # 0.75: a tie, either is right
    assert float(got[w == 0.0]) == 0.0
    # an exact power of two stays one under the layer's own rounding
    assert torch.equal(round_power_of_two(got, -6, 2), got)


def _output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    """||W x - s Q x||^2 with the least-squares per-row scale s (what calibrate fits)."""
    f, o = w @ x, q @ x
    s = (f * o).sum(1, keepdim=True) / o.square().sum(1, keepdim=True)
    return float((f - s * o).square().sum())


def test_feedback_beats_rounding_each_weight_alone_on_correlated_inputs():
    torch.manual_seed(0)
    d, n = 32, 4096
    mix = 3 * torch.randn(d, d) / d**0.5 + torch.eye(d)
    x = mix @ torch.randn(d, n)  # correlated inputs, as real features are
    w = torch.randn(16, d) * 0.3
    h = (x @ x.T).unsqueeze(0)
    q = _gptq(w.unsqueeze(0), h, -14, 0)[0]
    assert torch.equal(round_power_of_two(q, -14, 0), q)  # powers of two in the range
    plain = nearest_power_of_two(w, -14, 0)
    assert _output_error(w, q, x) < 0.6 * _output_error(w, plain, x)


def test_dead_inputs_get_zero_weights_and_stay_finite():
    torch.manual_seed(0)
    x = torch.randn(8, 1000)
    x[3] = 0.0  # an input that is always zero (a dead channel before the layer)
    w = torch.randn(1, 4, 8)
    q = _gptq(w, (x @ x.T).unsqueeze(0), -14, 0)
    assert torch.isfinite(q).all() and bool((q[0, :, 3] == 0).all())


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.mid = nn.Conv2d(16, 16, 3, padding=1, groups=2, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.pw(torch.relu(self.stem(x)))).relu()
        x = self.bn3(self.mid(self.bn2(self.dw(x)).relu()))
        return self.head(x.mean((2, 3)))


def test_round_shift_weights_on_pointwise_depthwise_and_grouped_convs():
    torch.manual_seed(0)
    model = _Net().eval()
    student = adderize.adderize(model, "shift", preserve=True)
    before = {n: m.weight.detach().clone() for n, (m, _) in blend_layers(student).items()}
    errors = round_shift_weights(student, [torch.randn(4, 3, 16, 16) for _ in range(3)])
    assert set(errors) == {"pw", "dw", "mid"}
    for name, (layer, _) in blend_layers(student).items():
        assert isinstance(layer, ShiftConv2d)
        w = layer.weight.detach()
        assert torch.equal(round_power_of_two(w, layer.min_exp, layer.max_exp), w)
        assert torch.equal(layer.float_weight, before[name])  # the float path unchanged
        assert errors[name] <= 1.0 + 1e-6, (name, errors[name])
    # the float model (blend 1) still computes the original
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(student(x), model(x))


@pytest.mark.parametrize("gptq", [False, True])
def test_convert_pretrained_with_and_without_feedback(gptq):
    from adderize.train.labelfree import LabelFreeConfig, convert_pretrained

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", num_classes=5).eval()
    images = torch.randn(16, 3, 32, 32)
    student, result = convert_pretrained(
        model, images, "shift", config=LabelFreeConfig(gptq=gptq), progress=False
    )
    assert ("gptq" in result.seconds) == gptq
    assert torch.isfinite(student(images[:2])).all()
