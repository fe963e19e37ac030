"""Conversion across timm CNN families (pretrained=False, small inputs)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import fx

import adderize
from adderize.nn import WithNorm
from adderize.passes.sources import classify
from adderize.passes.trace import Tracer

# (model, input size): one or two per family; the default run stays quick.
FAST = [
    ("resnet18", 32),  # ResNet
    ("resnext26ts", 32),  # ResNeXt (grouped), ByobNet
    ("regnetx_002", 32),  # RegNet
    ("tf_efficientnet_b0", 32),  # EfficientNet, Conv2dSame (dynamic 'same' padding)
    ("mobilenetv2_050", 32),  # MobileNetV2
    ("mobilenetv3_small_050", 32),  # MobileNetV3 (SE, conv head without BN)
    ("ghostnet_050", 32),  # GhostNet
    ("convnext_atto", 32),  # ConvNeXt (channels-last Linear MLP)
    ("dla46_c", 32),  # DLA
    ("mixnet_s", 32),  # MixedConv2d (ModuleDict of convs)
    ("mobilevit_xxs", 64),  # non-traceable timm leaf blocks: module walk inside
    ("ecaresnet26t", 32),  # Conv1d in ECA attention: Adder1d
    ("tresnet_m", 64),  # anti-aliasing blur filters as functional convs on buffers
    ("nf_resnet26", 32),  # ScaledStdConv2d everywhere: standardised adder layers
]
SLOW = [
    ("densenet121", 32),
    ("hrnet_w18_small", 64),
    ("vgg11", 32),
    ("inception_v3", 96),
    ("xception41", 64),
    ("res2net50_14w_8s", 32),
    ("cspresnet50", 64),
    ("dpn68", 32),
    ("skresnet18", 32),
    ("selecsls42b", 32),
    ("rexnet_100", 32),
    ("repvgg_a0", 32),
    ("efficientvit_b0", 64),
    ("ese_vovnet19b_dw", 32),
    ("resnetv2_50", 32),
    ("efficientnetv2_rw_t", 32),
    ("hgnetv2_b0", 32),
    ("mobilenetv4_conv_small", 32),
    ("resnet50", 64),
    ("resnetv2_50x1_bit", 32),
]
CASES = FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW]


@pytest.mark.parametrize(("name", "size"), CASES)
def test_timm_model_converts(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    ann, report = adderize.adderize(model, return_report=True)
    records = {r.name: r for r in report.records}

    convertible = {n for n, m in model.named_modules() if (s := classify(m)) and s.kind}
    special = {n for n, m in model.named_modules() if (s := classify(m)) and not s.kind}
    # every layer is reported; a convertible one is replaced, or kept as first/last
    for n in convertible | special:
        assert n in records, f"{n} missing from the report"
    for n in convertible:
        r = records[n]
        if r.action == "kept":
            assert "first layer" in r.reason or "last layer" in r.reason, r
        elif r.action == "skipped":
            assert "never called" in r.reason or "uses the weights directly" in r.reason, r
        else:
            new = ann.get_submodule(n)
            new = new.op if isinstance(new, WithNorm) else new
            assert type(new).__name__ == r.new, r
    for n in special:
        assert records[n].action == "skipped" and records[n].reason, records[n]
    # first / last layers follow timm's pretrained_cfg
    cfg = model.pretrained_cfg
    kept = {r.name for r in report.kept}
    for key in ("first_conv", "classifier"):
        wanted = cfg.get(key)
        wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
        for w in wanted:
            hits = {n for n in convertible if n == w or n.startswith(w + ".")}
            assert hits <= kept, (key, hits - kept)
    for r in report.inserted:
        parent = r.name.removesuffix(".norm")
        assert isinstance(ann.get_submodule(parent), WithNorm)

    x = torch.randn(2, 3, size, size)
    out = ann(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in ann.parameters() if p.requires_grad]
    assert sum(g is not None for g in grads) >= len(grads) * 0.9


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_b0", "convnext_atto"])
def test_traced_graph_matches_eager(name):
    """The graph the pass analyses computes what the model computes."""
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    gm = fx.GraphModule(model, Tracer().trace(model))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def _sweep():
    """benchmarks/timm_families.py, the sweep over every timm model family."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "timm_families.py"
    spec = importlib.util.spec_from_file_location("timm_families", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("family", timm.list_modules())
def test_every_timm_family_converts(family):
    result = _sweep().check(family)
    assert result.ok, f"{family} ({result.model}): {result.error}"
