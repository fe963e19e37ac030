"""Label-free conversion of pretrained models: dead BatchNorm channels, shift ranges from
the weights, the non-finite stop, the CLI, and a real ImageNet checkpoint."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import torch
from torch import nn

import adderize
from adderize._errors import AdderizeError
from adderize.cli import main
from adderize.nn import ShiftConv2d
from adderize.nn.shift import exponent_range, round_power_of_two
from adderize.train.anneal import Anneal, blend_layers, calibrate, fold_into_norm
from adderize.train.labelfree import LabelFreeConfig, check_finite, convert_pretrained


def _pretrained_like() -> nn.Module:
    """A small timm model with what real checkpoints have and digits-trained ones do not:
    BatchNorm channels with ``running_var == 0`` (their conv output constant: the weights
    of those channels zero) and conv weights above 1."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5).eval()
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 32, 32))
        model.eval()
        conv, bn = model.layer1[0].conv1, model.layer1[0].bn1
        conv.weight[:3] = 0.0  # dead channels: constant 0 output, running stats (0, 0)
        bn.running_mean[:3], bn.running_var[:3] = 0.0, 0.0
        bn.bias[:3] = torch.tensor([0.5, -0.2, 1.0])
        model.layer2[0].conv2.weight[0, 0] = 3.7  # a large weight, as Lite0's depthwise
    return model


def test_fold_of_a_dead_channel_is_exact_and_finite():
    layer = ShiftConv2d(2, 3, 1, bias=False)
    norm = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.3, -1.0, 0.0]))
        norm.running_var.copy_(torch.tensor([2.0, 0.0, 0.5]))
        norm.weight.copy_(torch.tensor([1.5, 0.7, -2.0]))
        norm.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    layer.blend_scale = torch.tensor([0.8, 0.0, -1e-25])  # channels 1 and 2: constants
    layer.blend_shift = torch.tensor([0.5, -1.0, 2.0])
    y = torch.randn(4, 3, 5, 5) * 10
    want = norm(y * layer.blend_scale.view(1, 3, 1, 1) + layer.blend_shift.view(1, 3, 1, 1))
    fold_into_norm(layer, norm)
    got = norm(y)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert layer.blend_scale is None and float(norm.weight.detach()[1]) == 0.0


@pytest.mark.parametrize("op", ["shift", "adder"])
def test_dead_channels_and_large_weights_convert_without_nan(op):
    model = _pretrained_like()
    x = torch.randn(16, 3, 32, 32)
    ann = adderize.adderize(model, op, preserve=True)
    calibrate(ann, x.split(8))
    ann.eval()
    for layer, _ in blend_layers(ann).values():
        layer.blend = 0.0
    with torch.no_grad():
        before = ann(x)  # the op model with its scales, not yet folded
    Anneal(ann, 1).finalize()
    with torch.no_grad():
        after = ann(x)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))


def test_shift_range_comes_from_the_weights_and_nothing_is_clamped():
    w = torch.tensor([0.01, -0.3, 1.0, 3.7])
    assert exponent_range(w) == (-12, 2)  # 3.7 rounds to 2^2; 15 exponents
    assert exponent_range(w * 0.1) == (-14, 0)  # DeepShift-PS's range for weights below 1
    assert exponent_range(w, min_exp=-8) == (-8, 2)
    conv = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w.view(4, 1, 1, 1))
    layer = ShiftConv2d.from_float(conv)
    q = round_power_of_two(layer.weight, layer.min_exp, layer.max_exp)
    assert float(q.abs().max()) == 4.0  # was clamped to 1 with [-14, 0]


def test_an_explicit_range_that_clamps_warns(caplog, monkeypatch):
    # the CLI's log_to_stdout (run by earlier tests) stops adderize's records at its logger
    monkeypatch.setattr(logging.getLogger("adderize"), "propagate", True)
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(3.7)
    with caplog.at_level(logging.WARNING, logger="adderize"):
        layer = ShiftConv2d.from_float(conv, max_exp=0)
    assert layer.max_exp == 0 and "clamps 1 weight(s)" in caplog.text


def test_saved_shift_model_keeps_its_ranges(tmp_path):
    model = _pretrained_like()
    ann = adderize.adderize(model, "shift")
    layer = ann.layer2[0].conv2
    assert (layer.min_exp, layer.max_exp) == (-12, 2)
    path = adderize.save(ann, tmp_path / "m.safetensors", model_name="resnet10t",
                         model_kwargs={"num_classes": 5})  # fmt: skip
    back = adderize.load(adderize.save(adderize.load(path), tmp_path / "again.safetensors"))
    assert (back.layer2[0].conv2.min_exp, back.layer2[0].conv2.max_exp) == (-12, 2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), ann.eval()(x))


def test_non_finite_values_stop_the_conversion_and_name_the_layer():
    model = _pretrained_like()
    with torch.no_grad():
        model.layer3[0].bn2.running_var[4] = -1.0  # sqrt of a negative: NaN
    with pytest.raises(AdderizeError, match=r"loading the pretrained model.*layer3\.0\.bn2"):
        convert_pretrained(model, torch.randn(4, 3, 32, 32), "shift", progress=False)
    with pytest.raises(AdderizeError, match=r"after stage X: .*layer3\.0\.bn2"):
        check_finite(model, torch.randn(2, 3, 32, 32), "stage X")


def test_convert_pretrained_reports_every_layer_and_warns_on_few_images():
    model = _pretrained_like()
    x = torch.randn(6, 3, 32, 32)
    cfg = LabelFreeConfig(refit_steps=2, batch_size=4)
    ann, result = convert_pretrained(model, x, "adder", config=cfg, progress=False)
    assert not any(m.blending for m in ann.modules() if isinstance(m, adderize.nn.Blendable))
    names = [f.name for f in result.layers]
    assert "layer1.0.conv1" in names and "conv1.0" not in names  # the stem stays float
    assert all(0.0 <= f.residual <= 1.0 + 1e-6 and f.op == "adder" for f in result.layers)
    assert 0.3 < result.energy_ratio < 1.0
    assert any("only 6 images" in w for w in result.warnings)
    assert set(result.seconds) >= {"convert", "refit", "calibrate"}


def test_config_rejects_bad_values():
    with pytest.raises(AdderizeError, match="distill_steps must be an integer >= 0, got -1"):
        LabelFreeConfig(distill_steps=-1)
    with pytest.raises(AdderizeError, match="batch_size"):
        LabelFreeConfig(batch_size=0)


def test_cli_converts_a_pretrained_file_from_a_folder_of_images(tmp_path, capsys):
    from PIL import Image

    model = _pretrained_like()
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    images = tmp_path / "images"
    images.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / f"{i}.png")
    out = tmp_path / "shift.safetensors"
    args = ["convert", "resnet10t", "--num-classes", "5", "--pretrained-file", str(weights),
            "--calibrate", str(images), "--preserve", "--ops", "shift", "--out", str(out),
            "--distill-steps", "2", "--batch-size", "4"]  # fmt: skip
    assert main(args) == 0
    assert "layers converted on 8 unlabelled images" in capsys.readouterr().out
    back = adderize.load(out)
    assert back.layer2[0].conv2.max_exp == 2
    report = json.loads((tmp_path / "shift.report.json").read_text())
    assert len(report["layers"]) == 13 and report["energy_ratio"] < 0.5
    with torch.no_grad():
        assert torch.isfinite(back.eval()(torch.randn(2, 3, 32, 32))).all()
    assert main(["convert", "resnet10t", "--preserve"]) == 2
    assert "need --calibrate IMAGES" in capsys.readouterr().err


@pytest.mark.assets
def test_real_pretrained_lite0_converts_label_free():
    """ImageNet EfficientNet-Lite0 (130 dead BatchNorm channels, depthwise weights up to
    3.7) to shift, calibrated on 16 natural photos: finite, and it still knows ImageNet."""
    from timm.data import create_transform, resolve_data_config

    from adderize import assets

    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(assets.lite_state_dict("lite0"))
    model.eval()
    dead = sum(int((m.running_var == 0).sum()) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d))  # fmt: skip
    assert dead == 130
    tf = create_transform(**resolve_data_config({}, model=model))
    samples = assets.imagenet_samples()
    x = torch.stack([tf(img) for img, _ in samples])
    with torch.no_grad():
        teacher = model(x).argmax(1)
    ann, result = convert_pretrained(
        model, assets.natural_photos()[:16], "shift", config=LabelFreeConfig(), progress=False
    )
    assert ann.blocks[0][0].conv_dw.max_exp == 2  # weights up to 3.7: 2^2, not clamped to 1
    with torch.no_grad():
        student = ann(x)
    assert torch.isfinite(student).all()
    # measured: 11 of 20 (Sapphire Rapids); NaN logits before the dead-channel fold
    assert int((student.argmax(1) == teacher).sum()) >= 9
    assert result.energy_ratio < 0.3
