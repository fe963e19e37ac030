"""Adaptive learning-rate scaling (eq. 33) and the l_p -> l_1 schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adderize
from adderize.nn import Adder2d, AdderLinear
from adderize.train import AdaptiveLRScaling, LpSchedule


def _model() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return adderize.adderize(net)


def _adder_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (Adder2d, AdderLinear))]


def _backward(model, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))
    nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("eta", [0.1, 0.2])
def test_step_sees_eta_sqrt_k_gradient_norms(eta):
    model = _model()
    seen = []
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    AdaptiveLRScaling(model, eta=eta).attach(opt)
    # registered after ours, so it observes the gradients the update uses
    opt.register_step_pre_hook(
        lambda o, a, k: seen.append([w.grad.norm() for w in _adder_weights(model)])
    )
    head_before = model[-1].weight.grad
    _backward(model)
    head_grad = model[-1].weight.grad.clone()
    opt.step()
    for w, n in zip(_adder_weights(model), seen[0], strict=True):
        assert math.isclose(n.item(), eta * math.sqrt(w.numel()), rel_tol=1e-5)
    assert head_before is None and torch.equal(model[-1].weight.grad, head_grad)  # untouched


def test_update_equals_lr_times_alpha_times_grad():
    model = _model()
    w = _adder_weights(model)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    AdaptiveLRScaling(model, eta=0.1).attach(opt)
    _backward(model)
    g = w.grad.clone()
    before = w.detach().clone()
    opt.step()
    alpha = 0.1 * math.sqrt(w.numel()) / g.norm()
    torch.testing.assert_close(w.detach(), before - 0.5 * alpha * g)


def test_zero_and_missing_gradients_are_left_alone():
    model = _model()
    ws = _adder_weights(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = AdaptiveLRScaling(model)
    scaler.attach(opt)
    ws[0].grad = torch.zeros_like(ws[0])
    ws[1].grad = None
    scaler.scale_()
    assert torch.count_nonzero(ws[0].grad) == 0 and ws[1].grad is None


def test_works_with_clipping_and_amp_grad_scaler():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    AdaptiveLRScaling(model, eta=0.1).attach(opt)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(_adder_weights(model)[0].grad.norm()))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    scaler.step(opt)
    scaler.update()
    w = _adder_weights(model)[0]
    assert math.isclose(seen[0].item(), 0.1 * math.sqrt(w.numel()), rel_tol=1e-4)


def _micro_batch_update(per):
    """The update of one step made of 2 micro-batches (gradient accumulation)."""
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    handle = AdaptiveLRScaling(model, eta=0.2, per=per).attach(opt)
    w = _adder_weights(model)[1]
    before = w.detach().clone()
    _backward(model, seed=1)
    _backward(model, seed=2)
    opt.step()
    handle.remove()
    return model, w, before - w.detach()


def test_per_backward_normalises_each_backward_as_the_official_code():
    _, w, update = _micro_batch_update("backward")
    # the official rule by hand: each micro-batch's gradient normalised, then summed
    torch.manual_seed(0)
    fresh = _model()  # the same initial weights
    grads = []
    for seed in (1, 2):
        fresh.zero_grad()
        _backward(fresh, seed=seed)
        g = _adder_weights(fresh)[1].grad
        grads.append(0.2 * math.sqrt(g.numel()) * g / g.norm())
    torch.testing.assert_close(update, grads[0] + grads[1])
    # per step normalises the accumulated gradient instead: a different, documented update
    _, _, step_update = _micro_batch_update("step")
    assert math.isclose(step_update.norm().item(), 0.2 * math.sqrt(w.numel()), rel_tol=1e-5)
    assert (step_update - update).norm() > 0.05 * update.norm()


def test_per_backward_hooks_are_removed():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    AdaptiveLRScaling(model, per="backward").attach(opt).remove()
    _backward(model)
    w = _adder_weights(model)[0]
    assert not math.isclose(w.grad.norm().item(), 0.2 * math.sqrt(w.numel()), rel_tol=1e-3)


def test_adaptive_lr_errors():
    with pytest.raises(ValueError, match="eta must be a positive finite number, got -1"):
        AdaptiveLRScaling(_model(), eta=-1)
    with pytest.raises(ValueError, match="no adder layers"):
        AdaptiveLRScaling(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"per must be one of \('step', 'backward'\), got 'call'"):
        AdaptiveLRScaling(_model(), per="call")
    model = _model()
    opt = torch.optim.SGD(model[-1].parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"2 of 2 adder weights are not optimised"):
        AdaptiveLRScaling(model).attach(opt)


def test_lp_schedule_linear_decay_and_resume():
    model = _model()
    sched = LpSchedule(model, decay_steps=4)
    layers = [m for m in model.modules() if isinstance(m, (Adder2d, AdderLinear))]
    assert all(m.p == 2.0 for m in layers)
    values = [sched.step() for _ in range(6)]
    assert values == [1.75, 1.5, 1.25, 1.0, 1.0, 1.0]
    assert all(m.p == 1.0 for m in layers)
    fresh_model = _model()
    resumed = LpSchedule(fresh_model, decay_steps=4)
    state = LpSchedule(_model(), decay_steps=4)
    state.step()
    resumed.load_state_dict(state.state_dict())
    assert resumed.p == 1.75
    assert all(m.p == 1.75 for m in fresh_model.modules() if isinstance(m, Adder2d))


def test_lp_schedule_errors():
    with pytest.raises(ValueError, match="start must be in"):
        LpSchedule(_model(), 10, start=3.0)
    with pytest.raises(ValueError, match="decay_steps must be a non-negative int"):
        LpSchedule(_model(), -1)
    with pytest.raises(ValueError, match="no adder layers"):
        LpSchedule(nn.Conv2d(1, 1, 1), 10)
