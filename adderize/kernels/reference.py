"""Independent plain-PyTorch definition of the adder layers, for tests.

It shares no code with :mod:`adderize.kernels.l1` or :mod:`adderize.nn`: the forward value
is the literal broadcast ``-sum |X - W|^p`` over unfolded patches (memory-hungry: tests
only), and the papers' gradients come out of autograd through surrogate functions whose
true derivatives are eqs. (23) and (27):

* weight: ``-1/2 (X - W)^2`` has ``d/dW = X - W``                       (eq. 23)
* input, p = 1: ``-huber(X - W, delta=1)`` has ``d/dX = HardTanh(W - X)``
* input, p > 1: ``-|X - W|^p / p`` has ``d/dX = sign(W - X) |W - X|^(p-1)``  (eq. 27)

The value is the true forward; each surrogate contributes only its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adder2d_reference", "adder_linear_reference", "adder_rows_reference"]


def _with_paper_gradients(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    """Elementwise term ``-|x - w|^p`` whose backward is the papers' gradients.

    ``x`` and ``w`` broadcast against each other; callers sum over the reduction axis.
    """
    value = -(x.detach() - w.detach()).abs().pow(p)
    w_sur = -0.5 * (x.detach() - w).pow(2)
    d = x - w.detach()
    if p == 1.0:
        x_sur = -F.huber_loss(d, torch.zeros_like(d), reduction="none", delta=1.0)
    else:
        x_sur = -d.abs().pow(p) / p
    return value + (w_sur - w_sur.detach()) + (x_sur - x_sur.detach())


def adder_rows_reference(a: torch.Tensor, b: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """``out[m, t] = -sum_k |a[m, k] - b[t, k]|^p`` for ``a: [M, K]``, ``b: [T, K]``."""
    return _with_paper_gradients(a[:, None, :], b[None, :, :], p).sum(-1)


def adder_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, p: float = 1.0
) -> torch.Tensor:
    """Reference AdderLinear on ``[..., in_features]`` inputs."""
    lead = x.shape[:-1]
    out = adder_rows_reference(x.reshape(-1, x.shape[-1]), weight, p)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])


def adder2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    p: float = 1.0,
) -> torch.Tensor:
    """Reference Adder2d with zero padding (NCHW input, OIHW weight)."""
    n, _, h, w_in = x.shape
    cout, cin_g, kh, kw = weight.shape
    stride, padding, dilation = (
        (v, v) if isinstance(v, int) else tuple(v) for v in (stride, padding, dilation)
    )
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w_in + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.reshape(n, groups, cin_g * kh * kw, oh * ow)
    w = weight.reshape(groups, cout // groups, cin_g * kh * kw)
    outs = []
    for g in range(groups):
        # [N, 1, K, L] against [1, Tg, K, 1] -> sum over K -> [N, Tg, L]
        term = _with_paper_gradients(cols[:, g, None, :, :], w[g][None, :, :, None], p)
        outs.append(term.sum(2))
    out = torch.cat(outs, dim=1).reshape(n, cout, oh, ow)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out
