"""Function-preserving conversion: exact start, calibration, the anneal, fold and resume."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import adderize
from adderize.nn import Adder2d, AdderLinear, Blendable
from adderize.passes.convert import BLEND_ATTR
from adderize.train.anneal import Anneal, blend_layers, calibrate
from adderize.train.refit import fit_residual, fitted, reconstruct


def _trained_like(name: str, size: int) -> nn.Module:
    """A timm model whose BatchNorms hold non-trivial statistics (as a trained model)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size) * 2 + 0.5)
    return model.eval()


# (model, input size, op): ResNet, depthwise MobileNetV3 (SE convs without BN: inserted),
# EfficientNet with TF 'same' padding, RegNet, ConvNeXt (LayerNorm after the depthwise
# convs, adder Linear MLPs), binary and shift ops.
CASES = [
    ("resnet10t", 32, "adder"),
    ("mobilenetv3_small_050", 32, "adder"),
    ("tf_efficientnet_b0", 32, "adder"),
    ("regnetx_002", 32, "adder"),
    ("convnext_atto", 32, "adder"),
    ("resnet10t", 32, "binary"),
    ("resnet10t", 32, "shift"),
]


@pytest.mark.parametrize(("name", "size", "op"), CASES)
def test_preserving_conversion_reproduces_the_model(name, size, op):
    model = _trained_like(name, size)
    ann, report = adderize.adderize(model, op, preserve=True, return_report=True)
    ann.eval()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        want, got = model(x), ann(x)
    # measured: 0 (every blended layer runs its float conv; inserted BatchNorms are the
    # identity up to float32 rounding of 1 - eps + eps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    layers = blend_layers(ann)
    assert len(layers) == len(report.replaced) > 0
    for layer, norm in layers.values():
        assert layer.blend == 1.0
        assert isinstance(norm, nn.modules.batchnorm._BatchNorm)


def test_plain_conversion_does_not_preserve():
    model = _trained_like("resnet10t", 32)
    ann = adderize.adderize(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(ann(x), model(x), atol=1e-2)
    assert not hasattr(ann, BLEND_ATTR)


def _calibrated(name: str = "resnet10t", size: int = 32) -> tuple[nn.Module, nn.Module]:
    model = _trained_like(name, size)
    ann = adderize.adderize(model, preserve=True)
    torch.manual_seed(1)
    calibrate(ann, [torch.randn(8, 3, size, size) for _ in range(2)])
    return model, ann


def test_calibration_is_the_least_squares_fit_and_freezes_the_float_weight():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip
    ann = adderize.adderize(model, preserve=True)
    batches = [torch.randn(6, 3, 10, 10) for _ in range(3)]
    calibrate(ann, batches)
    ((name, (layer, norm)),) = blend_layers(ann).items()
    assert name == "3" and norm is ann[4] and layer.blend == 1.0 and not ann.training
    assert torch.equal(layer.float_weight, layer.weight)
    assert layer.float_weight.data_ptr() != layer.weight.data_ptr()  # a frozen copy
    with torch.no_grad():  # the least-squares fit of the conv output by the adder output
        x = torch.cat([model[:3](b) for b in batches])
        f = model[3](x).transpose(0, 1).flatten(1).double()
        o = layer.op_forward(x).transpose(0, 1).flatten(1).double()
    fc, oc = f - f.mean(1, keepdim=True), o - o.mean(1, keepdim=True)
    scale = (fc * oc).mean(1) / oc.square().mean(1)
    torch.testing.assert_close(layer.blend_scale.double(), scale, rtol=1e-4, atol=1e-7)
    shift = f.mean(1) - scale * o.mean(1)
    torch.testing.assert_close(layer.blend_shift.double(), shift, rtol=1e-4, atol=1e-5)


def test_fit_residual_is_the_unexplained_share_of_the_float_output():
    layer = Adder2d(2, 3, 1)
    torch.manual_seed(0)
    f = torch.randn(4, 3, 5, 5)
    assert float(fit_residual(layer, -2 * f + 3, f)) < 1e-10  # any affine of f explains it
    noise = torch.randn(4, 3, 5, 5)
    o = f + noise
    per = [(f[:, c].flatten(), o[:, c].flatten()) for c in range(3)]
    unexplained = sum(  # 1 - R^2 per channel, weighted by the channel's variance
        ((fc - fc.mean()).square().sum() * (1 - torch.corrcoef(torch.stack([fc, oc]))[0, 1] ** 2))
        for fc, oc in per
    ) / sum((fc - fc.mean()).square().sum() for fc, _ in per)
    torch.testing.assert_close(fit_residual(layer, o, f), unexplained)


def test_refit_moves_the_adder_ops_to_their_float_outputs_and_keeps_the_float_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip
    ann = adderize.adderize(model, {"default": "adder", "names": {"6": "shift"}}, preserve=True)
    originals = {n: m.weight.detach().clone() for n, (m, _) in blend_layers(ann).items()}
    batches = [torch.randn(8, 3, 12, 12) for _ in range(4)]
    with pytest.raises(ValueError, match="positive int"):
        reconstruct(ann, batches, 0)
    result = reconstruct(ann, iter(batches * 20), steps=80, lr=0.05)
    assert set(result) == {"3"}  # the adder layer; the shift layer keeps its rounding
    before, after = result["3"]
    assert after < 0.5 * before, result
    layers = blend_layers(ann)
    adder, shift = layers["3"][0], layers["6"][0]
    assert not torch.equal(adder.weight, originals["3"])
    assert torch.equal(adder.float_weight, originals["3"])  # the float path is the conv
    assert torch.equal(shift.weight, originals["6"]) and shift.float_weight is None
    calibrate(ann, batches)  # fits the scales to the refit op, keeps the original float weight
    assert torch.equal(adder.float_weight, originals["3"])
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(ann(x), model(x))  # still the float model at blend 1
        residual = fit_residual(adder, adder.op_forward(model[:3](x)), model[3](model[:3](x)))
    assert float(residual) < 0.5 * before  # the fit holds on new inputs


def test_chained_refit_fits_each_op_on_the_op_model_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip
    ann = adderize.adderize(model, preserve=True)
    batch = torch.randn(8, 3, 12, 12)
    with pytest.raises(ValueError, match=r"chain is a fraction"):
        reconstruct(ann, [batch], 1, chain=1.5)
    first, second = blend_layers(ann)["3"][0], blend_layers(ann)["6"][0]
    seen: list[torch.Tensor] = []
    handle = second.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    reconstruct(ann, [batch], 1, lr=1e-9, chain=1.0)  # one step, the weights barely move
    handle.remove()
    float_input, chained_input = seen  # the float pass, then the op model's pass
    with torch.no_grad():
        x = model[:3](batch)
        expected = model[5](model[4](fitted(first, first.op_forward(x), model[3](x))))
    torch.testing.assert_close(float_input, model[:6](batch))
    torch.testing.assert_close(chained_input, expected, rtol=1e-4, atol=1e-4)


def test_calibrated_inserted_norms_stay_the_identity_in_training_mode():
    # mobilenetv3: SE convs and the conv head have no BatchNorm, so the conversion inserts
    # one; as inserted (running_var = 1 - eps) it is the identity in eval mode only
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7)
    for m in model.modules():  # running statistics of the data, as a trained model has
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model.train()(torch.randn(64, 3, 32, 32))
    ann = adderize.adderize(model.eval(), preserve=True)
    inserted = [n.removesuffix(".op") for n in blend_layers(ann) if n.endswith(".op")]
    assert inserted

    def worst_change(mode_train: bool) -> float:
        """Largest relative change an inserted norm makes to its input, one fresh batch."""
        seen = []
        hooks = [ann.get_submodule(n).register_forward_hook(
            lambda m, a, y: seen.append(float((y - m.op(a[0])).abs().max() / y.abs().max())))
            for n in inserted]  # fmt: skip
        with torch.no_grad():
            ann.train(mode_train)(torch.randn(64, 3, 32, 32))
        for h in hooks:
            h.remove()
        return max(seen)

    state = copy.deepcopy(ann.state_dict())
    before = worst_change(True)
    ann.load_state_dict(state)
    calibrate(ann, [torch.randn(64, 3, 32, 32) for _ in range(2)])
    exact, after = worst_change(False), worst_change(True)
    # measured: 1.6 before (batch statistics normalise), 0.49 after (the worst layer: a
    # new batch's statistics of per-image SE vectors vs the calibration data's; 0.01-0.35
    # relative in norm), 1e-7 in eval mode
    assert before > 1.0 and after < 0.7 and exact < 1e-5, (before, after, exact)


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050", "convnext_atto"])
def test_finalize_folds_the_scale_into_the_batchnorm_exactly(name):
    _, ann = _calibrated(name)
    anneal = Anneal(ann, steps=10)
    for layer, _ in anneal.layers.values():
        layer.blend = 0.0  # the op model with its fitted scale and shift
    ann.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = ann(x)
        anneal.finalize()
        after = ann(x)
    # measured 2e-7 (resnet10t) to 2e-5 (mobilenetv3) of the largest output
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    for layer, _ in anneal.layers.values():
        assert not layer.blending and layer.float_weight is None
    assert not hasattr(ann, BLEND_ATTR)


def test_anneal_schedule_and_errors():
    model = _trained_like("resnet10t", 32)
    ann = adderize.adderize(model, preserve=True)
    anneal = Anneal(ann, steps=4, shape="linear")
    with pytest.raises(RuntimeError, match="not calibrated"):
        anneal.step()
    calibrate(ann, [torch.randn(4, 3, 32, 32)])
    assert [anneal.step() for _ in range(4)] == [0.75, 0.5, 0.25, 0.0]
    assert anneal.finalized
    cosine = Anneal(adderize.adderize(model, preserve=True), steps=4, shape="cosine")
    assert cosine.blend == 1.0
    cosine.last_step = 2
    assert cosine.blend == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape must be one of linear, cosine"):
        Anneal(ann, steps=4, shape="step")
    with pytest.raises(ValueError, match="preserve=True"):
        Anneal(adderize.adderize(model), steps=4)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        Anneal(adderize.adderize(model, preserve=True), steps=0)
    with pytest.raises(ValueError, match="insert_norm=True"):
        adderize.OpMapping(insert_norm=False, preserve=True)


def _train(ann: nn.Module, anneal: Anneal, steps: int, seed: int) -> list[float]:
    opt = torch.optim.SGD(ann.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    ann.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=gen)
        out = ann(x)
        loss = out.square().mean() + anneal.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        anneal.step()
        losses.append(float(loss.detach()))
    return losses


def test_blended_training_moves_only_the_op_weights_and_reports_a_local_loss():
    _, ann = _calibrated()
    anneal = Anneal(ann, steps=6)
    frozen = {n: layer.float_weight.clone() for n, (layer, _) in anneal.layers.items()}
    start = {n: layer.weight.detach().clone() for n, (layer, _) in anneal.layers.items()}
    scale0 = {n: layer.blend_scale.clone() for n, (layer, _) in anneal.layers.items()}
    ann.train()
    anneal.step()  # blend 1 -> below 1: both paths run
    ann(torch.randn(4, 3, 32, 32))
    loss = anneal.loss()
    assert isinstance(loss, torch.Tensor) and loss.requires_grad and float(loss.detach()) > 0
    assert anneal.loss() == 0.0  # consumed
    _train(ann, anneal, 3, seed=0)
    for n, (layer, _) in anneal.layers.items():
        assert torch.equal(layer.float_weight, frozen[n]), n
        assert not torch.equal(layer.weight, start[n]), n
        assert not torch.equal(layer.blend_scale, scale0[n]), n  # tracked while training


def test_resume_of_the_anneal_continues_identically():
    _, ann = _calibrated()
    anneal = Anneal(ann, steps=6)
    _train(ann, anneal, 2, seed=0)
    saved_model = copy.deepcopy(ann.state_dict())
    saved_anneal = copy.deepcopy(anneal.state_dict())
    reference = _train(ann, anneal, 5, seed=1)  # crosses the end of the anneal
    assert anneal.finalized

    _, fresh = _calibrated()  # another process: same conversion, its own calibration
    resumed = Anneal(fresh, steps=6)
    resumed.load_state_dict(saved_anneal)
    fresh.load_state_dict(saved_model)
    assert resumed.last_step == 2
    assert _train(fresh, resumed, 5, seed=1) == pytest.approx(reference, rel=1e-5)
    assert resumed.finalized
    for (a, _), (b, _) in zip(anneal.layers.values(), resumed.layers.values(), strict=True):
        torch.testing.assert_close(a.weight, b.weight)
        assert not a.blending and not b.blending


def test_resume_after_the_anneal_ended():
    _, ann = _calibrated()
    anneal = Anneal(ann, steps=2)
    _train(ann, anneal, 3, seed=0)
    state, model_state = anneal.state_dict(), ann.state_dict()
    _, fresh = _calibrated()
    resumed = Anneal(fresh, steps=2)
    resumed.load_state_dict(state)
    fresh.load_state_dict(model_state)
    assert resumed.finalized and not hasattr(fresh, BLEND_ATTR)
    x = torch.randn(2, 3, 32, 32)
    ann.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ann(x))


def test_the_annealed_model_has_no_multiplication_in_converted_layers(tmp_path):
    from adderize.energy import energy_report

    _, ann = _calibrated()
    anneal = Anneal(ann, steps=2)
    with pytest.raises(ValueError, match="still blending"):
        adderize.save(ann, tmp_path / "mid.safetensors", model_name="resnet10t",
                      model_kwargs={"num_classes": 7})  # fmt: skip
    _train(ann, anneal, 2, seed=0)
    report = energy_report(ann.eval(), (1, 3, 32, 32))
    adder = [r for r in report.layers if r.op == "adder"]
    assert len(adder) == len(anneal.layers)
    assert all(r.counts.get("mult", 0) == 0 and r.counts["add"] > 0 for r in adder)
    kept = [r for r in report.layers if r.op == "conv"]  # the stem and the classifier
    assert report.op_totals(parametric_only=True)["mult"] == sum(r.macs for r in kept)

    path = adderize.save(ann, tmp_path / "done.safetensors", model_name="resnet10t",
                         model_kwargs={"num_classes": 7})  # fmt: skip
    loaded = adderize.load(path).eval()
    assert not any(m.blending for m in loaded.modules() if isinstance(m, Blendable))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ann(x))


def test_blend_of_a_linear_layer_uses_the_last_dimension():
    lin = nn.Linear(12, 9)
    layer = AdderLinear.from_float(lin)
    x = torch.randn(5, 3, 12)
    layer.blend = 1.0
    torch.testing.assert_close(layer(x), lin(x))
    layer.blend_scale, layer.blend_shift = torch.full((9,), 0.5), torch.arange(9.0)
    layer.blend = 0.0
    torch.testing.assert_close(layer(x), layer.op_forward(x) * 0.5 + torch.arange(9.0))
    conv = Adder2d(4, 8, 3)
    conv.blend = 0.5
    with pytest.raises(RuntimeError, match="calibrate"):
        conv(torch.randn(1, 4, 5, 5))


def test_tracked_fit_is_the_batch_least_squares_fit():
    torch.manual_seed(0)
    layer = Adder2d(6, 5, 3, padding=1)
    layer.blend, layer.blend_momentum = 0.5, 1.0  # the running fit is this batch's fit
    layer.blend_scale, layer.blend_shift = torch.zeros(5), torch.zeros(5)
    layer.float_weight = torch.randn_like(layer.weight)
    x = torch.randn(4, 6, 7, 7) + 3.0  # adder outputs far from zero: a centred fit is needed
    layer.train()(x)
    with torch.no_grad():
        f = layer.float_forward(x).transpose(0, 1).flatten(1).double()
        o = layer.op_forward(x).transpose(0, 1).flatten(1).double()
    oc = o - o.mean(1, keepdim=True)
    scale = (f * oc).mean(1) / oc.square().mean(1)
    torch.testing.assert_close(layer.blend_scale.double(), scale, rtol=1e-4, atol=1e-6)
    shift = f.mean(1) - scale * o.mean(1)
    torch.testing.assert_close(layer.blend_shift.double(), shift, rtol=1e-4, atol=1e-4)
    assert layer.blend_loss is not None and layer.blend_loss > 0


def test_the_float_path_is_a_target_without_gradient_in_training():
    torch.manual_seed(0)
    layer = Adder2d(3, 4, 3, padding=1)
    layer.blend = 0.5
    layer.blend_scale, layer.blend_shift = torch.zeros(4), torch.zeros(4)
    layer.blend_momentum = 0.0  # keep the zero scale: the op path contributes nothing
    layer.float_weight = torch.randn_like(layer.weight)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    layer.train()(x).sum().backward()
    assert torch.count_nonzero(x.grad) == 0  # no conv backward through the float path
    x.grad = None
    layer.eval()(x).sum().backward()  # outside training the layer is an ordinary function
    assert torch.count_nonzero(x.grad) > 0
