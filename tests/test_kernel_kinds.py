"""The table of kernel kinds: a workload is typed and checked against its kind, and a new
kind is one table entry (with its compute and, where the generic tile does not fit, its
schedule): this file adds a toy kind and takes it through selection, the kernel cache and
the compiled-model report."""

from __future__ import annotations

import pytest
import torch

from adderize.kernels import tvm_l1
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules.cpu import HandTile, TileLayout, tile
from adderize.tvm_schedules.kinds import KINDS, Kind, Workload, candidates, registered

pytestmark = pytest.mark.tvm


def test_a_workload_names_its_fields_and_refuses_a_wrong_shape():
    w = Workload.of("conv_forward", 2, 16, 10, 10, 32, 3, 3, 2, 1, 1, lp=True)
    assert (w["n"], w["stride"], w["groups"]) == (2, 2, 1)
    assert (
        w.name == "conv_forward_lp"
        and str(w) == "conv_forward_lp(2, 16, 10, 10, 32, 3, 3, 2, 1, 1)"
    )
    assert w == Workload("conv_forward", (2, 16, 10, 10, 32, 3, 3, 2, 1, 1), True)
    assert len({w, Workload.of("conv_forward", *w.shape, lp=True)}) == 1  # a cache key
    with pytest.raises(ValueError, match=r"conv_forward takes 10 ints \('n', 'c', 'hp'"):
        Workload.of("conv_forward", 2, 16, 10)
    with pytest.raises(ValueError, match=r"unknown kernel kind 'conv'; known: \[.*'conv_forward'"):
        Workload.of("conv", 1)
    with pytest.raises(ValueError, match="kernel transpose has no l_p variant"):
        Workload.of("transpose", 1, 4, 4, lp=True)


def test_every_kind_declares_a_compute_and_a_schedule():
    for kind in KINDS.values():
        assert (
            kind.fixed is not None
            or kind.own_candidates is not None
            or (kind.layout is not None and kind.hand is not None)
        ), kind.name
        assert kind.family in ("adder", "int8 adder", "binary", "conv")


def _toy_compute(m: int, t: int, k: int) -> list:
    """``out[m, t] = -sum_k |a[m, k] - bT[k, t]| / 2``: the l1 forward at half scale."""
    from tvm import te

    a = te.placeholder((m, k), name="a")
    bt = te.placeholder((k, t), name="bT")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((m, t), lambda i, j: te.sum(te.abs(a[i, r] - bt[r, j]), axis=r), name="acc")
    out = te.compute((m, t), lambda i, j: acc[i, j] * -0.5, name="out")
    return [a, bt, out]


TOY = Kind(
    "toy_half_l1",
    ("m", "t", "k"),
    _toy_compute,
    layout=lambda shape: TileLayout(1, 0, shape[0], tile(shape[1])[1], False, False),
    hand=HandTile(wide=(6,), narrow=(12,), divide=False),
)


@pytest.mark.skipif(not tvm_l1.available(), reason="TVM unavailable")
def test_a_toy_kind_is_one_table_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("ADDERIZE_KERNEL_SELECT", "measure")  # the path users get
    with registered(TOY):
        w = Workload.of("toy_half_l1", 20, 16, 24)
        assert len(candidates(w, lanes=8)) > 1
        fn = tvm_build.kernel(w)
        assert tvm_build.chosen(w) in {str(c) for c in candidates(w)}
        a, bt = torch.randn(20, 24), torch.randn(24, 16)
        out = torch.empty(20, 16)
        fn(a, bt, out)
        want = -(a[:, :, None] - bt[None]).abs().sum(1) / 2
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-4)
        assert list((tmp_path / "adderize" / "kernels").glob("toy_half_l1-*.so"))
        tvm_build.forget(w)
    with pytest.raises(ValueError, match="unknown kernel kind 'toy_half_l1'"):
        Workload.of("toy_half_l1", 20, 16, 24)
    with registered(TOY):
        with pytest.raises(ValueError, match="'toy_half_l1' is already registered"):
            registered(TOY).__enter__()
        assert "toy_half_l1" in KINDS
    assert "toy_half_l1" not in KINDS
