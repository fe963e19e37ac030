"""The TVM kernels' parallel loops run on torch's OpenMP pool (adderize.tvm_schedules.pool),
whatever the import order: same results as TVM's own pool, every task run, and adderize
changes no OpenMP setting of the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adderize.kernels import tvm_l1

pytestmark = pytest.mark.tvm

CHILD = r"""
import os, sys
order = sys.argv[1]
if order == "torch":
    import torch, adderize
else:
    import adderize, torch
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[2]))
from adderize.kernels.reference import adder2d_reference
from adderize.nn import Adder2d
from adderize.tvm_schedules import pool
layer = Adder2d(24, 40, 3, padding=1, bias=False)  # dense NCHW forward, many parallel tasks
dw = Adder2d(32, 32, 5, stride=2, padding=2, groups=32, bias=False)  # depthwise planes
for m, c in ((layer, 24), (dw, 32)):
    x = torch.randn(3, c, 17, 17, requires_grad=True)
    y = m(x)
    ref = adder2d_reference(torch.nn.functional.pad(x, (m.padding[0],) * 4), m.weight,
                            None, m.stride[0], 0, 1, m.groups)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-3)
    y.sum().backward()  # input gradient kernels
    assert torch.isfinite(x.grad).all()
print("pool:", pool.status())
print("env:", {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")})
"""


def _child(order: str, threads: int, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "ADDERIZE_TVM_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, order, str(threads)],
        env={**base, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not tvm_l1.available(), reason="TVM unavailable")
@pytest.mark.parametrize("order", ["torch", "adderize"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernels_run_on_torchs_openmp_pool_in_either_import_order(order, threads):
    """3 threads on a 2-core machine: more threads than cores, tasks split by the team."""
    out = _child(order, threads)
    assert "pool: the OpenMP pool of libgomp" in out or "pool: the OpenMP pool of libiomp" in out
    assert "'GOMP_SPINCOUNT': None" in out  # adderize changes no OpenMP setting


@pytest.mark.skipif(not tvm_l1.available(), reason="TVM unavailable")
def test_tvms_own_pool_stays_available():
    out = _child("torch", 2, ADDERIZE_TVM_POOL="tvm")
    assert "pool: TVM's thread pool (ADDERIZE_TVM_POOL=tvm)" in out
