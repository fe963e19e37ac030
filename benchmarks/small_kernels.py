"""The small kernels around the adder convs, against the PyTorch ops they replaced.

* weight re-layouts (paid at every training step): the blocked transpose kernel against
  PyTorch's permute-copy, ``[T, R] -> [R, T]``;
* the one-position kernels of a batch-1 squeeze-excite conv (1x1 on a 1x1 map): the
  forward ``-sum_c |W - x|`` and both training gradients (eqs. 23 and 27), against the same
  arithmetic as torch ops (``W - x``, then ``abs`` and ``sum``; ``clamp``, a matrix-vector
  product and a scaled copy).

Each pair is timed in alternation (``layers.paired``), microseconds per call, min of rounds.

    python benchmarks/small_kernels.py
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from layers import paired

from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules.kinds import Workload
from adderize.tvm_schedules.target import describe

TRANSPOSES = [(96, 24), (384, 64), (48, 1152), (1152, 192), (512, 512), (512, 4608)]
SQUEEZE_EXCITE = [(8, 32), (20, 480), (48, 1152), (1152, 48)]  # (T, C)


def _row(label: str, ops: Callable[[], object], kernel: Callable[[], object]) -> None:
    a, b = paired(ops, kernel)
    print(f"{label:28s} {a * 1e6:9.1f} {b * 1e6:9.1f} {b / a:6.2f}x", flush=True)


def _relayout(t: int, r: int) -> None:
    w, out = torch.randn(1, t, r), torch.empty(1, r, t)
    fn = tvm_build.kernel(Workload.of("transpose", 1, t, r))
    _row(f"{t} x {r}", lambda: w.transpose(1, 2).contiguous(), lambda: fn(w, out))


def _squeeze_excite(t: int, c: int) -> None:
    x, w, g = torch.randn(c), torch.randn(t, c), torch.randn(t)
    out, gw, gx = torch.empty(t), torch.empty(t, c), torch.empty(c)
    fwd = tvm_build.kernel(Workload.of("one_position_forward", t, c))
    bwd = tvm_build.kernel(Workload.of("one_position_backward", t, c))

    def torch_backward() -> object:
        d = w - x
        return g.unsqueeze(0).mm(d.clamp(-1.0, 1.0)), d.mul_(g.unsqueeze(1)).neg_()

    _row(f"{t} x {c} forward", lambda: (w - x).abs_().sum(1).neg_(), lambda: fwd(x, w, out))
    _row(f"{t} x {c} gradients", torch_backward, lambda: bwd(x, w, g, gw, gx))


def main() -> None:
    print(describe())
    print(f"torch {torch.__version__}; microseconds per call, PyTorch ops vs adderize kernel")
    print(f"{'weight re-layout [T, R]':28s} {'torch':>9s} {'kernel':>9s} {'ratio':>7s}")
    for t, r in TRANSPOSES:
        _relayout(t, r)
    print(f"\n{'squeeze-excite T x C':28s} {'torch':>9s} {'kernel':>9s} {'ratio':>7s}")
    for t, c in SQUEEZE_EXCITE:
        _squeeze_excite(t, c)


if __name__ == "__main__":
    main()
