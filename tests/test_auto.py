"""``ops="auto"``: each layer's op from measured sensitivity under an energy budget."""

from __future__ import annotations

import itertools
import random

import pytest
import timm
import torch

import adderize
from adderize._errors import AdderizeError
from adderize.cli import main
from adderize.train.auto import _knapsack, choose_ops, sensitivity
from adderize.train.recipe import Recipe


def _trained_like() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5)
    for m in model.modules():  # timm zero-inits each block's last BN: its convs would not count
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def test_knapsack_finds_the_least_score_within_budget():
    rng = random.Random(0)
    layers, ops = [f"l{i}" for i in range(6)], ["a", "b", "c"]
    for _ in range(20):
        score = {n: {o: rng.random() for o in ops} for n in layers}
        saving = {n: {o: rng.uniform(0, 10) for o in ops} for n in layers}
        need = rng.uniform(0, 30)
        feasible = [
            dict(zip(layers, pick, strict=True))
            for pick in itertools.product(ops, repeat=len(layers))
            if sum(saving[n][o] for n, o in zip(layers, pick, strict=True)) >= need
        ]
        got = _knapsack(layers, ops, score, saving, need)
        assert sum(saving[n][got[n]] for n in layers) >= need - 1e-9
        best = min(sum(score[n][a[n]] for n in layers) for a in feasible)
        assert sum(score[n][got[n]] for n in layers) <= best + 1e-9


def test_sensitivity_is_measured_for_every_converted_layer():
    model = _trained_like()
    x = torch.randn(8, 3, 32, 32)
    scores = sensitivity(model, "shift", [x])
    assert "conv1.0" not in scores and "fc" not in scores  # first and last stay
    assert all(s > 0 for s in scores.values()) and len(scores) == 13


def test_auto_chooses_under_the_budget_and_reports_each_layer():
    model = _trained_like()
    x = torch.randn(8, 3, 32, 32)
    ann, report = adderize.adderize(model, "auto", budget=0.5, calibrate=x, return_report=True)
    choice = report.auto
    assert choice.energy_ratio <= 0.5 and len(choice.layers) == 13
    assert type(ann.layer1[0].conv1).__name__ in ("Adder2d", "ShiftConv2d")
    assert {r.name: r.new for r in report.replaced}.keys() == choice.assignment.keys()
    for layer in choice.layers:
        assert set(layer.scores) == {"adder", "shift"} and layer.op in layer.scores
    assert "auto:" in str(report) and "auto" in report.to_dict()
    # with float layers allowed and the whole budget, nothing changes: every layer stays conv
    free = choose_ops(model, 1.0, x, ops=("adder", "shift", "conv"))
    assert set(free.assignment.values()) == {"conv"} and free.energy_ratio == pytest.approx(1.0)


def test_auto_refuses_an_unreachable_budget_and_stray_arguments():
    model = _trained_like()
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(AdderizeError, match=r"budget 0.01 is below .* cheapest assignment"):
        choose_ops(model, 0.01, x)
    with pytest.raises(AdderizeError, match="pass calibrate=batches"):
        adderize.adderize(model, "auto")
    with pytest.raises(AdderizeError, match="budget go with ops='auto'"):
        adderize.adderize(model, "adder", budget=0.5)
    assert main(["convert", "resnet10t", "--ops", "auto"]) == 2
    with pytest.raises(AdderizeError, match="auto_budget"):
        Recipe(auto_budget=2.0)
