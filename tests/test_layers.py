"""Layer numerics and gradients against the independent reference and autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adderize.kernels.l1 import l1_forward, l1_grad_a
from adderize.kernels.reference import adder2d_reference, adder_linear_reference
from adderize.nn import (
    Adder1d,
    Adder2d,
    AdderLinear,
    BatchNormLastDim,
    BinaryConv1d,
    BinaryConv2d,
    BinaryLinear,
    ShiftConv1d,
    ShiftConv2d,
    ShiftLinear,
)

# (in, out, kernel, stride, padding, dilation, groups, input HxW)
CONV_CASES = [
    (3, 5, 3, 1, 1, 1, 1, (7, 7)),
    (4, 6, (3, 2), 2, (1, 0), 1, 2, (9, 8)),  # non-square kernel, groups, stride
    (6, 6, 3, 1, 2, 2, 6, (8, 9)),  # depthwise, dilation
    (4, 8, 1, 1, 0, 1, 1, (5, 5)),  # pointwise
    (2, 4, 5, 3, 2, 1, 1, (11, 10)),  # large stride
    (8, 4, 3, 1, 1, 1, 4, (6, 6)),  # groups with one output per... 4 groups, 1 out each
]
P_VALUES = [1.0, 1.5, 2.0]


def _layer_and_reference(case, p, bias=True, max_temp_bytes=1 << 12):
    cin, cout, k, s, pad, d, g, hw = case
    torch.manual_seed(0)
    layer = Adder2d(cin, cout, k, s, pad, d, g, bias=bias, p=p, max_temp_bytes=max_temp_bytes)
    layer = layer.double()
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
    x = torch.randn(2, cin, *hw, dtype=torch.float64, requires_grad=True)
    return layer, x


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("p", P_VALUES)
def test_adder2d_matches_reference(case, p):
    layer, x = _layer_and_reference(case, p)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    w = layer.weight.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    _, _, _, s, pad, d, g, _ = case
    y_ref = adder2d_reference(x2, w, layer.bias.detach(), s, pad, d, g, p)
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)


@pytest.mark.parametrize("p", P_VALUES)
def test_adder_linear_matches_reference(p):
    torch.manual_seed(0)
    layer = AdderLinear(7, 5, p=p, max_temp_bytes=256).double()
    x = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)  # extra leading dims
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    w = layer.weight.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_ref = adder_linear_reference(x2, w, layer.bias.detach(), p)
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)


def test_forward_is_negative_l1_distance_by_hand():
    layer = Adder2d(1, 1, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[1.0, -1.0], [0.5, 2.0]]]]))
    x = torch.tensor([[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]])
    # patches [0,1;3,4] and [1,2;4,5]: -(1+2+2.5+2) and -(0+3+3.5+3)
    assert layer(x).flatten().tolist() == [-7.5, -9.5]


@pytest.mark.parametrize("padding", ["same", "valid", 2])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_forms_match_conv2d_geometry(padding, padding_mode):
    """Output shape and padded values follow nn.Conv2d: compare against the reference on an
    input padded the way nn.Conv2d pads it."""
    torch.manual_seed(0)
    kernel = (3, 4) if padding == "same" else 3
    conv = nn.Conv2d(2, 3, kernel, padding=padding, padding_mode=padding_mode)
    layer = Adder2d.from_float(conv)
    x = torch.randn(1, 2, 6, 7)
    assert layer(x).shape == conv(x).shape
    pads = conv._reversed_padding_repeated_twice
    mode = "constant" if padding_mode == "zeros" else padding_mode
    expected = adder2d_reference(F.pad(x, pads, mode=mode), layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected)


def test_dynamic_same_matches_timm_conv2d_same():
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, 3, stride=2)
    layer = Adder2d.from_float(conv, dynamic_same=True)
    for hw in [(9, 9), (10, 7)]:
        x = torch.randn(1, 3, *hw)
        assert layer(x).shape == conv(x).shape
        pw = max((-(-hw[1] // 2) - 1) * 2 + 3 - hw[1], 0)
        ph = max((-(-hw[0] // 2) - 1) * 2 + 3 - hw[0], 0)
        padded = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        expected = adder2d_reference(padded, layer.weight, layer.bias, stride=2)
        torch.testing.assert_close(layer(x), expected)


def test_gradcheck_input_gradient_p1_saturated():
    """Where every |X - W| >= 1, HardTanh(W - X) is the true derivative: gradcheck in float64
    validates the unfold/fold/group bookkeeping of the input gradient."""
    torch.manual_seed(0)
    layer = Adder2d(4, 4, 3, stride=2, padding=1, dilation=1, groups=2).double()
    with torch.no_grad():
        layer.weight.uniform_(-1.0, -0.5)
    layer.weight.requires_grad_(False)
    x = (torch.rand(1, 4, 5, 5, dtype=torch.float64) + 1.0).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("p", [1.25, 1.5, 2.0])
def test_gradients_are_the_true_ones_divided_by_p(p):
    """Eq. 27 and eq. 23 (at p = 2) drop the factor p of the true derivative of |X - W|^p:
    check against plain autograd of the forward formula."""
    torch.manual_seed(0)
    a = torch.randn(1, 6, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    true = -(a[:, :, None] - b[:, None]).abs().pow(p).sum(-1)
    g = torch.randn_like(true)
    ga_true, gb_true = torch.autograd.grad(true, (a, b), g)
    torch.testing.assert_close(l1_forward(a.detach(), b.detach(), p), true.detach())
    torch.testing.assert_close(p * l1_grad_a(a.detach(), b.detach(), g, p), ga_true)
    if p == 2.0:
        from adderize.kernels.l1 import l1_grad_b

        torch.testing.assert_close(2 * l1_grad_b(a.detach(), b.detach(), g), gb_true)


def test_chunk_size_does_not_change_results():
    torch.manual_seed(0)
    a, b = torch.randn(2, 50, 12), torch.randn(2, 7, 12)
    g = torch.randn(2, 50, 7)
    for p in (1.0, 1.5):
        ref = l1_grad_a(a, b, g, p, max_temp_bytes=1 << 30)
        for cap in (1, 4 * 7 * 12 * 4, 1000):
            torch.testing.assert_close(l1_grad_a(a, b, g, p, max_temp_bytes=cap), ref)
        torch.testing.assert_close(l1_forward(a, b, p, 1), l1_forward(a, b, p, 1 << 30))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_peak_temporary_is_bounded(backend):
    """No Cout x K x M temporary: allocations during forward+backward stay far below it."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    layer = Adder2d(32, 64, 3, padding=1, p=1.0, max_temp_bytes=1 << 20, backend=backend)
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    full = 64 * 32 * 9 * 8 * 16 * 16 * 4  # the broadcast temporary: 151 MB
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer(x).sum().backward()
    biggest = max(e.cpu_memory_usage for e in prof.events())  # largest single allocation
    unfolded = 32 * 9 * 8 * 16 * 16 * 4  # im2col of the input: 2.4 MB
    assert biggest <= 2 * unfolded + (1 << 20), (biggest, full)


def test_low_precision_inputs_compute_in_float32():
    layer = Adder2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(layer(x.bfloat16()), layer(x.bfloat16().float()))


def test_invalid_arguments():
    with pytest.raises(ValueError, match=r"p must be in \[1, 2\]"):
        Adder2d(2, 2, 3, p=3.0)
    with pytest.raises(ValueError, match="padding_mode"):
        Adder2d(2, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="dynamic_same"):
        Adder2d(2, 2, 3, padding=1, dynamic_same=True)
    with pytest.raises(TypeError, match=r"expects an nn\.Conv2d"):
        Adder2d.from_float(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="min_exp"):
        ShiftConv2d(2, 2, 3, min_exp=2, max_exp=0)


@pytest.mark.parametrize("cls", [Adder2d, BinaryConv2d, ShiftConv2d])
def test_conv_from_float_copies_everything(cls):
    conv = nn.Conv2d(
        4,
        6,
        (3, 5),
        stride=(2, 1),
        padding=(1, 2),
        dilation=(1, 2),
        groups=2,
        padding_mode="reflect",
    )
    new = cls.from_float(conv.eval())
    for attr in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ):
        assert getattr(new, attr) == getattr(conv, attr), attr
    assert torch.equal(new.weight, conv.weight) and torch.equal(new.bias, conv.bias)
    assert not new.training
    assert not isinstance(new, nn.Conv2d)
    x = torch.randn(2, 4, 9, 11)
    assert new(x).shape == conv(x).shape
    assert cls.__name__ in repr(new) and "kernel_size=(3, 5)" in repr(new)


@pytest.mark.parametrize("cls", [AdderLinear, BinaryLinear, ShiftLinear])
def test_linear_from_float(cls):
    lin = nn.Linear(6, 3, bias=False)
    new = cls.from_float(lin)
    assert new.bias is None and torch.equal(new.weight, lin.weight)
    assert new(torch.randn(2, 5, 6)).shape == (2, 5, 3)


def test_binary_forward_and_clipped_ste():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    layer = BinaryConv2d.from_float(conv)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = layer(x)  # the first training forward sets the threshold to the channel means
    beta = x.detach().mean((0, 2, 3)).reshape(1, -1, 1, 1)
    torch.testing.assert_close(layer.threshold.detach().reshape(beta.shape), beta)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
    xb = torch.where(x >= beta, 1.0, -1.0)
    wb = torch.where(conv.weight >= 0, 1.0, -1.0) * alpha
    torch.testing.assert_close(y, F.conv2d(xb, wb, padding=1))
    y.sum().backward()
    assert torch.all(x.grad[(x - beta).abs() > 1] == 0)
    assert torch.any(x.grad[(x - beta).abs() <= 1] != 0)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.threshold.grad is not None


def test_binary_threshold_keeps_information_after_relu():
    """sign(x) of a ReLU output is +1 everywhere; the data-initialised threshold is not."""
    torch.manual_seed(0)
    layer = BinaryConv2d(4, 4, 1, bias=False)
    x = torch.relu(torch.randn(8, 4, 5, 5))
    binary = layer.binarize_input(x, 1)
    assert (binary == 1).float().mean() < 0.8 and (binary == -1).any()
    layer.eval()  # eval never re-initialises
    before = layer.threshold.detach().clone()
    layer(torch.randn(2, 4, 5, 5) + 10)
    assert torch.equal(layer.threshold.detach(), before)


def test_binary_linear_values():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, -0.5, 0.0]]))
    layer = BinaryLinear.from_float(lin).eval()  # eval: threshold stays 0
    x = torch.tensor([[0.3, -0.1, 0.0, 2.0]])  # signs: + - + +
    # row 0: alpha 2.5, signs + - + - -> 2.5 * (1 + 1 + 1 - 1) = 5
    # row 1: alpha 0.375, signs + + - + -> 0.375 * (1 - 1 - 1 + 1) = 0
    torch.testing.assert_close(layer(x), torch.tensor([[5.0, 0.0]]))


def test_shift_weights_are_powers_of_two():
    torch.manual_seed(0)
    lin = nn.Linear(50, 20)
    layer = ShiftLinear.from_float(lin)
    from adderize.nn.shift import round_power_of_two

    q = round_power_of_two(layer.weight, layer.min_exp, layer.max_exp).detach()
    nz = q[q != 0]
    exps = torch.log2(nz.abs())
    assert torch.equal(exps, exps.round()) and exps.min() >= -14 and exps.max() <= 0
    # rounding in the log domain: each |q| is within a factor sqrt(2) of |w| (inside range)
    ratio = (q / layer.weight.detach()).abs()
    assert torch.all((ratio >= 2**-0.5 - 1e-6) & (ratio <= 2**0.5 + 1e-6))
    x = torch.randn(3, 50, requires_grad=True)
    torch.testing.assert_close(layer(x), F.linear(x, q, layer.bias))
    layer(x).sum().backward()
    assert layer.weight.grad is not None


def test_batchnorm_last_dim_channels_last():
    bn = BatchNormLastDim(4)
    x = torch.randn(2, 3, 5, 4) * 3 + 1
    y = bn(x)
    flat = y.reshape(-1, 4)
    torch.testing.assert_close(flat.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert y.shape == x.shape


@pytest.mark.parametrize("cls", [Adder1d, BinaryConv1d, ShiftConv1d])
def test_conv1d_layers_are_their_2d_op_over_one_row(cls):
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2).double()
    layer = cls.from_float(conv)
    # nn.Conv1d's state dict: same keys and shapes (binary adds its input threshold)
    sd = layer.state_dict()
    assert all(sd[k].shape == v.shape for k, v in conv.state_dict().items())
    x = torch.randn(2, 4, 11, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == conv(x).shape and y.is_contiguous()
    assert layer(x[0]).shape == conv(x[0]).shape  # unbatched [C, L], as nn.Conv1d
    two_d = {Adder1d: Adder2d, BinaryConv1d: BinaryConv2d, ShiftConv1d: ShiftConv2d}[cls]
    ref = two_d(4, 6, (1, 3), stride=(1, 2), padding=(0, 1), groups=2).double()
    ref.load_state_dict({k: v.unsqueeze(2) if k == "weight" else v for k, v in sd.items()})
    torch.testing.assert_close(y, ref(x.unsqueeze(2)).squeeze(2))
    if cls is Adder1d:  # and the adder is -sum |x - w| by the plain reference
        xp = F.pad(x, (1, 1)).unsqueeze(2)
        want = adder2d_reference(xp, conv.weight.unsqueeze(2), conv.bias, stride=(1, 2), groups=2)
        torch.testing.assert_close(y, want.squeeze(2))
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad.shape == conv.weight.shape
    layer.blend = 1.0  # the float path is the Conv1d exactly
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("cls", [BinaryConv2d, ShiftConv2d, BinaryLinear, ShiftLinear])
def test_quantised_weight_kept_for_inference_until_the_weight_changes(cls, monkeypatch):
    """Under no_grad the quantised weight is made once per weight version; an in-place
    update (an optimizer step, ``load_state_dict``), a new exponent range or a new weight
    tensor make it again, and a training forward never uses the kept one."""
    import adderize.nn.binary as binary
    import adderize.nn.shift as shift

    torch.manual_seed(0)
    conv = cls in (BinaryConv2d, ShiftConv2d)
    layer = (cls(4, 6, 3, padding=1) if conv else cls(12, 6)).eval()
    x = torch.randn(2, 4, 5, 5) if conv else torch.randn(2, 12)
    calls = []
    for mod, name in ((binary, "binarize_weight"), (shift, "round_power_of_two")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda w, *a, _f=real: calls.append(1) or _f(w, *a))
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(layer(x), y) and len(calls) == 1
        layer.weight.mul_(-1)  # in place: the version counter moves
        y_flipped = layer(x)
        assert len(calls) == 2 and not torch.equal(y_flipped, y)
        if cls in (ShiftConv2d, ShiftLinear):
            layer.min_exp = -2
            layer(x)
            assert len(calls) == 3
        layer.weight = nn.Parameter(layer.weight.detach().clone())
        n = len(calls)
        kept = layer(x)
        assert len(calls) == n + 1
    fresh = layer(x)  # gradients on: made again, and the weight gets its gradient
    fresh.sum().backward()
    assert len(calls) == n + 2 and layer.weight.grad is not None
    torch.testing.assert_close(kept, fresh.detach())
