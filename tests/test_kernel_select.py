"""The kernels' per-machine selection: every candidate tile computes the same thing, the
fastest is kept and cached with its label, and the modes are checked."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from adderize.kernels import tvm_l1
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules.target import cpu_arch, cpu_isa, cpu_model, describe

if not tvm_l1.available():
    pytest.skip(f"TVM unavailable: {tvm_l1.unavailable_reason()}", allow_module_level=True)

from adderize.tvm_schedules import cpu
from adderize.tvm_schedules.compute import FMA_FORMS
from adderize.tvm_schedules.kinds import Workload, candidates, computes, schedule

W = Workload.of

pytestmark = pytest.mark.tvm

KERNELS = [
    W("forward", 50, 64, 72),  # row tail
    W("grad_a", 33, 16, 48),
    W("conv_forward", 2, 16, 9, 9, 32, 3, 3, 1, 1, 1),
    W("conv_forward", 2, 32, 10, 10, 64, 3, 3, 2, 1, 2),  # stride 2, groups
    W("conv_forward", 1, 8, 7, 7, 24, 1, 1, 1, 1, 1),  # 1x1, 24 channels
    W("conv_forward_nchw", 2, 16, 10, 10, 32, 3, 3, 2, 1, 1),  # NCHW output (fma form too)
    W("conv_forward", 1, 16, 9, 9, 16, 3, 3, 1, 1, 1, lp=True),
    W("conv_grad_input", 2, 16, 11, 11, 32, 3, 3, 1, 1),
    W("depthwise_forward", 2, 16, 11, 11, 3, 3, 2, 1),
    W("depthwise_forward_nchw", 2, 16, 9, 9, 3, 3, 2, 1, 1, 1, 1, 1),  # padding fused
    W("depthwise_forward_nchw", 1, 8, 9, 70, 5, 5, 1, 1, 0, 0, 1, 1),  # 68-wide rows
    W("depthwise_forward_nchw", 1, 8, 7, 7, 3, 3, 1, 1, 0, 0, 0, 0),  # no padding
    W("depthwise_forward_nchw", 1, 8, 9, 9, 3, 3, 1, 1, 1, 2, 0, 1, lp=True),  # asymmetric
    # 16-channel blocks: the channel-vectorised form among the candidates
    W("depthwise_forward_nchw", 2, 32, 9, 9, 3, 3, 2, 1, 0, 1, 0, 1),
    W("depthwise_forward_nchw", 1, 16, 8, 8, 5, 5, 1, 2, 4, 4, 4, 4, lp=True),
    W("pointwise_forward_nchw", 2, 16, 64, 24),  # both loop orders, fma form too
    W("pointwise_forward_nchw", 1, 8, 32, 6),
    W("pointwise_grad_input_nchw", 2, 16, 64, 24),
    W("depthwise_grad_input_nchw", 2, 8, 9, 9, 3, 3, 1, 1, 1, 1, 1),
    W("depthwise_grad_input_nchw", 1, 8, 9, 9, 5, 5, 2, 4, 4, 4, 4, lp=True),
    W("depthwise_grad_input", 2, 24, 11, 11, 3, 3, 1),
]


def _run(mod, args, option=None):
    """Run ``mod`` on copies of ``args`` as the kernel cache would (the ``fma`` form with
    LLVM's contraction and its 1.0 input bound); returns the tensors after the call."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    option = option or cpu.Variant(1, 1, False)
    fn = tvm_build._bind(tvm_build._compile(mod, option)["main"], str(option))
    fn(*copies)
    return [a for a in copies if isinstance(a, torch.Tensor)]


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("w", KERNELS, ids=str)
def test_every_candidate_tile_computes_what_the_unscheduled_compute_does(w, lanes):
    import tvm
    from tvm import te

    options = candidates(w, lanes=lanes)
    assert 1 <= len(options) <= cpu.MAX_CANDIDATES
    assert len(set(options)) == len(options)
    plain = tvm.IRModule({"main": te.create_prim_func(computes(w))})
    args = tvm_build._random_args(plain)
    want = _run(plain, args)
    for option in options:
        got = _run(schedule(w, variant=option), args, option)
        for g, expected in zip(got, want, strict=True):
            torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-3, msg=f"tile {option}")


# The kernels that mobilenetv2_100, mobilenetv3_small_100, efficientnet_b0 and resnet18 use
# at 32 and 64 px (training and inference; tools/model_workloads.py records them): the
# 1x1, 2x2 and 3x3 maps, stride 2 on even and odd sizes and 5x5 depthwise convs users meet.
_ALL_MODEL_KERNELS = [
    Workload(kind, tuple(shape), lp)
    for kind, shape, lp in json.loads(
        (Path(__file__).parent / "data" / "model_workloads.json").read_text()
    )["kernels"]
]
_MODEL_KERNELS = [w for w in _ALL_MODEL_KERNELS if w.spec.selectable]


def _smallest(per_kind: int) -> list[Workload]:
    """The ``per_kind`` model kernels of each kind with the fewest elements (the small and
    odd shapes where tiles meet loops of extent 1 and row tails)."""
    by_kind: dict[str, list[Workload]] = {}
    for w in _MODEL_KERNELS:
        by_kind.setdefault(w.name, []).append(w)
    return [
        w
        for ws in by_kind.values()
        for w in sorted(ws, key=lambda w: math.prod(w.shape))[:per_kind]
    ]


def test_every_candidate_of_every_model_kernel_schedules():
    """No candidate tile of a kernel these models reach fails to schedule, at 8 and 16
    lanes (a ``channels`` tile raised on a 1x1 output map: mobilenetv2_100 at 32 px)."""
    assert len(_MODEL_KERNELS) > 400
    failed = []
    for w in _MODEL_KERNELS:
        for lanes in (8, 16):
            for option in candidates(w, lanes=lanes):
                try:
                    schedule(w, variant=option)
                except Exception as e:
                    failed.append(f"{w} {option} at {lanes} lanes: {e}")
    assert not failed, "\n".join(failed[:20])


SMALL_MODEL_KERNELS = _smallest(4)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("w", SMALL_MODEL_KERNELS, ids=str)
def test_every_candidate_on_small_model_shapes_computes_the_reference(w, lanes):
    test_every_candidate_tile_computes_what_the_unscheduled_compute_does(w, lanes)


def test_measured_selection_leaves_out_a_tile_that_cannot_build(monkeypatch):
    """The selection users get (``measure``) on mobilenetv2_100's 1x1-output depthwise conv
    (the shape that crashed at 32 px), with a candidate that raises added: it is left out."""
    monkeypatch.setenv("ADDERIZE_KERNEL_SELECT", "measure")
    w = W("depthwise_forward_nchw", 2, 576, 2, 2, 3, 3, 2, 1, 1, 1, 1, 1)
    assert w in _MODEL_KERNELS
    real = candidates(w)
    broken = cpu.Variant(3, 16, False, "channels")  # the tile that raised on this shape
    monkeypatch.setattr(tvm_build, "candidates", lambda w, lanes=None: [broken, *real])
    _, label = tvm_build.build(w)
    assert label in {str(c) for c in real}
    monkeypatch.setattr(tvm_build, "candidates", lambda w, lanes=None: [broken])
    with pytest.raises(
        RuntimeError, match=r"no candidate schedule of kernel depthwise_forward_nchw\(2, 576"
    ):
        tvm_build.build(w)


def test_candidates_fit_the_register_file_after_the_hand_tile():
    w = W("conv_forward", 32, 64, 58, 58, 64, 3, 3, 1, 1, 1)
    for lanes, regs in ((8, 16), (16, 32)):
        hand, *others = candidates(w, lanes=lanes)
        assert hand == candidates(w, lanes=16)[0]
        for c in others:
            vectors = -(-c.cols // lanes)
            same_tile = (c.rows, c.cols) == (hand.rows, hand.cols)  # other order / form
            assert c.rows * vectors + vectors + 3 <= regs or same_tile, f"{c} spills"
    # both loop orders are tried for dense convs
    options = candidates(w, lanes=8)
    assert {c.cols_outer for c in options} == {True, False}
    # and every inner-loop form: the max form accumulated by FMAs where the CPU has them
    maxes = "maxfma" if "fma" in cpu_isa() else "max"
    for kind in ("conv_forward", "conv_forward_nchw"):
        forms = {c.form for c in candidates(W(kind, *w.shape), lanes=8)}
        assert forms == {"abs", "fma", maxes}
    # below MAX_FORM_MIN_TERMS terms per output (64 -> 256 1x1) no max forms
    narrow = W("conv_forward_nchw", 1, 64, 56, 56, 256, 1, 1, 1, 1, 1)
    assert {c.form for c in candidates(narrow)} == {"abs", "fma"}
    # nor on l_p kernels (p passed at run time)
    assert {c.form for c in candidates(W("conv_forward", *w.shape, lp=True))} == {"abs"}


def test_fastest_keeps_the_quickest_function():
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.02)

    def quick():
        calls.append("quick")

    assert tvm_build.fastest([slow, quick, slow], []) == 1
    # the clearly slower ones are not timed again after the first round; a contender much
    # shorter than a round is called 20 times in each of the 2 further rounds
    assert calls.count("slow") == 4 and calls.count("quick") == 2 + 2 * 20


def test_measured_choice_is_built_labelled_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("ADDERIZE_KERNEL_SELECT", "measure")
    tvm_build.forget()
    picks = []
    monkeypatch.setattr(tvm_build, "fastest", lambda fns, args: picks.append(len(fns)) or 1)
    w = W("conv_forward_nchw", 2, 16, 9, 9, 32, 3, 3, 1, 1, 1)
    options = candidates(w)
    x, weight = torch.randn(2, 16, 9, 9), torch.randn(32, 16, 3, 3)
    y = tvm_l1.conv_forward(x, weight, 1, 1, 1)
    assert picks == [len(options)]
    assert tvm_build.chosen(w) == str(options[1])
    assert tvm_build.variant(w) == options[1]
    (label,) = (tmp_path / "adderize" / "kernels").glob("conv_forward_nchw-*.so.variant")
    assert label.read_text() == str(options[1])
    # a new process (here: emptied memory) loads the choice from disk without timing
    tvm_build.forget()
    monkeypatch.setattr(tvm_build, "build", lambda *a: pytest.fail("rebuilt a cached kernel"))
    torch.testing.assert_close(tvm_l1.conv_forward(x, weight, 1, 1, 1), y)
    assert tvm_build.chosen(w) == str(options[1])
    # the first-candidate mode is a different cache entry
    monkeypatch.setenv("ADDERIZE_KERNEL_SELECT", "first")
    assert tvm_build._path(w) != label.with_suffix("")
    tvm_build.forget()  # nothing of this cache folder stays in memory for later tests


def test_a_bad_selection_mode_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("ADDERIZE_KERNEL_SELECT", "fastest")
    with pytest.raises(ValueError, match=r"ADDERIZE_KERNEL_SELECT='fastest'.*measure, first"):
        tvm_build.select_mode()


def test_machine_description_names_the_cpu():
    line = describe()
    assert cpu_model() in line and "torch threads" in line
    assert all(flag in line for flag in cpu_isa())
    assert f"({cpu_arch()})" in line and cpu_arch() != "unknown"  # TVM names the core


def test_the_isa_cap_drops_avx512_from_flags_target_and_lanes(monkeypatch):
    from adderize._errors import AdderizeError
    from adderize.tvm_schedules import target

    def fresh() -> None:
        target.cpu_isa.cache_clear()
        target.llvm_target.cache_clear()

    monkeypatch.setenv("ADDERIZE_MAX_ISA", "AVX2")
    fresh()
    try:
        assert set(target.cpu_isa()) <= {"avx2", "fma"}
        assert "-avx512f" in str(target.llvm_target())  # a new kernel cache key too
        assert cpu.vector_lanes() == (8 if "avx2" in target.cpu_isa() else 4)
        assert "ADDERIZE_MAX_ISA=avx2" in describe() and "ONEDNN_MAX_CPU_ISA" in describe()
        monkeypatch.setenv("ADDERIZE_MAX_ISA", "sse9")
        fresh()
        with pytest.raises(AdderizeError, match=r"ADDERIZE_MAX_ISA='sse9'.*valid: avx2"):
            target.cpu_isa()
    finally:
        monkeypatch.delenv("ADDERIZE_MAX_ISA")
        fresh()
    assert "-avx512f" not in str(target.llvm_target())


_DENSE = W("conv_forward_nchw", 1, 16, 9, 9, 32, 3, 3, 1, 1, 1)
_DW = W("depthwise_forward_nchw", 1, 32, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1)
_PW = W("pointwise_forward_nchw", 1, 16, 64, 32)


@pytest.mark.skipif("fma" not in cpu_isa(), reason="the CPU has no FMA instructions")
@pytest.mark.parametrize(
    ("kernel", "form", "op"),
    [
        (_DENSE, "fma", "vsubps"),
        (_DENSE, "maxfma", "vmaxps"),
        (_DW, "channels_fma", "vsubps"),
        (_PW, "fma", "vsubps"),
    ],
)
def test_the_fma_forms_accumulate_with_fused_multiply_adds(kernel, form, op):
    """Built as the kernel cache builds it, the ``fma`` forms' inner loops are sub, and, fma
    (``channels_fma``: the depthwise one) and max, fma (``maxfma``): LLVM's contraction
    fuses ``term * one + acc`` (the point of the forms); their counterparts
    (:data:`~adderize.tvm_schedules.compute.FMA_FORMS`) accumulate by adds."""
    option = next(c for c in candidates(kernel) if c.form == form)
    lib = tvm_build._compile(schedule(kernel, variant=option), option)
    asm = lib.mod.inspect_source("asm")
    assert "vfmadd" in asm and op in asm
    plain = cpu.Variant(option.rows, option.cols, option.cols_outer, FMA_FORMS[form])
    lib = tvm_build._compile(schedule(kernel, variant=plain), plain)
    assert "vfmadd" not in lib.mod.inspect_source("asm")
