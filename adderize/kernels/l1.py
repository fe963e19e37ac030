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

Backends: with ``backend="auto"`` (the default) float32 CPU tensors use the TVM-generated
kernels of :mod:`adderize.kernels.tvm_l1`: direct conv kernels for any p (see
:func:`use_direct_conv`), and for p = 1 the row kernels below. Where TVM cannot be
imported they fall back to the plain-PyTorch code here, with a one-time warning.
``"torch"`` forces the fallback, ``"tvm"`` requires TVM. :mod:`adderize.kernels.reference`
holds the independent definition the tests compare against.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch

from adderize._errors import AdderizeError
from adderize.kernels import tvm_l1

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_TEMP_BYTES",
    "check_backend",
    "l1_forward",
    "l1_grad_a",
    "l1_grad_b",
    "use_direct_conv",
]

BACKENDS = ("auto", "tvm", "torch")
_WARNED: set[str] = set()

#: Default cap on the difference temporary of the input-gradient kernel (bytes).
#: Hand-timed here (2 threads): 1-4 MiB chunks ran alike, 64 MiB ones up to 2x slower.
DEFAULT_MAX_TEMP_BYTES = 4 * 2**20


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise AdderizeError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _tvm_usable(backend: str) -> bool:
    """Whether ``backend`` allows TVM and TVM imports (warn once / raise when it does not)."""
    if backend == "torch":
        return False
    if not tvm_l1.available():
        if backend == "tvm":
            raise RuntimeError(
                f"backend='tvm' but TVM is unavailable: {tvm_l1.unavailable_reason()}"
            )
        if "tvm" not in _WARNED:
            _WARNED.add("tvm")
            warnings.warn(
                "adderize: TVM is unavailable, adder layers use the slower PyTorch kernels "
                f"({tvm_l1.unavailable_reason()})",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def _use_tvm(a: torch.Tensor, b: torch.Tensor, p: float, backend: str) -> bool:
    return p == 1.0 and _tvm_usable(backend) and tvm_l1.supported(a, b)


def use_direct_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    backend: str,
) -> bool:
    """Whether an adder conv runs on the direct TVM conv kernels (no im2col), for any p:
    square stride and dilation, float32 on CPU, and channels the kernels take
    (:func:`adderize.kernels.tvm_l1.conv_supported`)."""
    return (
        stride[0] == stride[1]
        and dilation[0] == dilation[1]
        and _tvm_usable(backend)
        and tvm_l1.conv_supported(x, weight, groups)
    )


def _row_chunks(a: torch.Tensor, b: torch.Tensor, max_temp_bytes: int) -> Iterator[slice]:
    """Row slices of ``a`` whose ``[G, m, T, K]`` difference fits in ``max_temp_bytes``."""
    groups, rows, k = a.shape
    row_bytes = groups * b.shape[1] * k * a.element_size()
    chunk = max(1, max_temp_bytes // max(row_bytes, 1))
    for start in range(0, rows, chunk):
        yield slice(start, start + chunk)


def l1_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    p: float,
    max_temp_bytes: int = DEFAULT_MAX_TEMP_BYTES,
    backend: str = "auto",
) -> torch.Tensor:
    """``-sum_k |a - b|^p`` for ``a: [G, M, K]``, ``b: [G, T, K]`` -> ``[G, M, T]``.

    p = 1 and p = 2 reduce without temporaries (``torch.cdist``); other p use row chunks
    (``cdist``'s generic-p path is 4x slower than the chunked broadcast).
    """
    if _use_tvm(a, b, p, backend):
        return tvm_l1.forward(a, b)
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
    backend: str = "auto",
) -> torch.Tensor:
    """Input gradient (eq. 27): HardTanh for p = 1, signed ``|d|^(p-1)`` for p > 1.

    ``a: [G, M, K]``, ``b: [G, T, K]``, ``grad_out: [G, M, T]`` -> ``[G, M, K]``.
    """
    if p == 2.0:  # phi_2 is the identity: sum_t G (b - a) is linear, two products suffice
        g_sum = grad_out.sum(dim=2, keepdim=True)  # [G, M, 1]
        return torch.baddbmm(a * g_sum, grad_out, b, beta=-1.0)
    if _use_tvm(a, b, p, backend):
        return tvm_l1.grad_a(a, b, grad_out)
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
