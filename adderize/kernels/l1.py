"""Memory-bounded plain-PyTorch kernels for the l_p "adder matmul".

Every adder layer reduces to a batched distance product between rows of an input matrix
``a`` of shape ``[G, M, K]`` (G groups, M rows = batch x output positions, K = reduction
length) and a weight matrix ``b`` of shape ``[G, T, K]`` (T output channels per group)::

    out[g, m, t] = -sum_k |a[g, m, k] - b[g, t, k]| ** p

The gradients are the papers' (Universal Adder Neural Networks, eqs. 23 and 27), not the
true derivative of ``out``::

    grad_b[g, t, k] = sum_m G[g, m, t] * (a[g, m, k] - b[g, t, k])            (eq. 23)
    grad_a[g, m, k] = sum_t G[g, m, t] * phi_p(b[g, t, k] - a[g, m, k])       (eq. 27)
    phi_1(d) = HardTanh(d) = clamp(d, -1, 1),  phi_p(d) = sign(d) |d| ** (p - 1)  (p > 1)

Memory bound (documented, tested): nothing builds the ``M x T x K`` difference tensor. The
p = 1 and p = 2 forwards reduce on the fly (``torch.cdist``); ``grad_b`` is two matrix
products; the other-p forward and ``grad_a`` run over row chunks whose difference
temporary is at most ``max_temp_bytes`` (default :data:`DEFAULT_MAX_TEMP_BYTES`), or one
row when a single row is larger. Peak extra
memory of a layer is therefore the unfolded input (``K x M`` values, as im2col for a conv),
its gradient, and ``max_temp_bytes``.

These are the fallback kernels; :mod:`adderize.kernels.reference` holds the independent
definition the tests compare against.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["DEFAULT_MAX_TEMP_BYTES", "l1_forward", "l1_grad_a", "l1_grad_b"]

#: Default cap on the difference temporary of the input-gradient kernel (bytes).
#: Measured in ``benchmarks/bench_chunk.py``: chunks that fit in L2 cache are fastest.
DEFAULT_MAX_TEMP_BYTES = 4 * 2**20


def _row_chunks(a: torch.Tensor, b: torch.Tensor, max_temp_bytes: int) -> Iterator[slice]:
    """Row slices of ``a`` whose ``[G, m, T, K]`` difference fits in ``max_temp_bytes``."""
    groups, rows, k = a.shape
    row_bytes = groups * b.shape[1] * k * a.element_size()
    chunk = max(1, max_temp_bytes // max(row_bytes, 1))
    for start in range(0, rows, chunk):
        yield slice(start, start + chunk)


def l1_forward(
    a: torch.Tensor, b: torch.Tensor, p: float, max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES
) -> torch.Tensor:
    """``-sum_k |a - b|^p`` for ``a: [G, M, K]``, ``b: [G, T, K]`` -> ``[G, M, T]``.

    p = 1 and p = 2 reduce without temporaries (``torch.cdist``); other p use row chunks
    (``cdist``'s generic-p path is 4x slower than the chunked broadcast).
    """
    if p in (1.0, 2.0):
        d = torch.cdist(a, b, p=p)
        return d.neg_() if p == 1.0 else d.square_().neg_()
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[1])
    b_ = b.unsqueeze(1)  # [G, 1, T, K]
    for sl in _row_chunks(a, b, max_temp_bytes):
        diff = b_ - a[:, sl].unsqueeze(2)  # [G, m, T, K]
        out[:, sl] = diff.abs_().pow_(p).sum(-1).neg_()
    return out


def l1_grad_b(a: torch.Tensor, b: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Full-precision weight gradient (eq. 23): ``G^T a - b * sum_m G`` -> ``[G, T, K]``."""
    g_sum = grad_out.sum(dim=1).unsqueeze(-1)  # [G, T, 1]
    return torch.baddbmm(b * g_sum, grad_out.transpose(1, 2), a, beta=-1.0)


def l1_grad_a(
    a: torch.Tensor,
    b: torch.Tensor,
    grad_out: torch.Tensor,
    p: float,
    max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES,
) -> torch.Tensor:
    """Input gradient (eq. 27): HardTanh for p = 1, signed ``|d|^(p-1)`` for p > 1.

    ``a: [G, M, K]``, ``b: [G, T, K]``, ``grad_out: [G, M, T]`` -> ``[G, M, K]``.
    """
    if p == 2.0:  # phi_2 is the identity: sum_t G (b - a) is linear, two products suffice
        g_sum = grad_out.sum(dim=2, keepdim=True)  # [G, M, 1]
        return torch.baddbmm(a * g_sum, grad_out, b, beta=-1.0)
    out = torch.empty_like(a)
    b_ = b.unsqueeze(1)  # [G, 1, T, K]
    for sl in _row_chunks(a, b, max_temp_bytes):
        diff = b_ - a[:, sl].unsqueeze(2)  # [G, m, T, K]: b - a
        if p == 1.0:
            diff.clamp_(-1.0, 1.0)
        else:
            diff = diff.sign().mul_(diff.abs().pow_(p - 1.0))
        # [G, m, 1, T] @ [G, m, T, K] -> [G, m, 1, K]
        out[:, sl] = torch.matmul(grad_out[:, sl].unsqueeze(2), diff).squeeze(2)
    return out
