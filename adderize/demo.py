"""``adderize demo``: the whole pipeline on the offline digits recipe, in a few minutes.

Trains the conv teacher, converts it (function-preserving, then annealed to adders) and
fine-tunes it with distillation, reports energy, reloads the saved model, compiles it with
TVM and checks the compiled model against PyTorch. Rerunning reuses the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(
    out: str | Path = "runs/demo",
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> bool:
    """Run the demo into ``out``; True when the reloaded model scores as trained and the
    compiled model agrees with PyTorch (max abs error below 1e-3)."""
    import adderize
    from adderize.energy import energy_report
    from adderize.train.data import build_loaders
    from adderize.train.distributed import Context
    from adderize.train.finetune import finetune
    from adderize.train.loop import evaluate
    from adderize.train.recipe import Recipe

    out = Path(out)
    overrides = [*overrides, f"out={out / 'run'}"]
    if epochs is not None:
        overrides.append(f"epochs={epochs}")
    recipe = Recipe().override(overrides)
    print(
        f"[1/5] digits (scikit-learn, 8x8 -> {recipe.data.input_size} px): train the conv "
        f"timm {recipe.model.name}, convert it, fine-tune the adder model with distillation"
    )
    resume = (out / "run" / "config.yaml").is_file()
    if resume:
        print(f"      continuing / reusing the run in {out / 'run'}")
    result = finetune(recipe, resume=resume, progress=progress)

    print(f"\n[2/5] energy of one {recipe.data.input_size} px image (45 nm tables):")
    student = adderize.load(result.student_file).eval()
    size = (1, 3, recipe.data.input_size, recipe.data.input_size)
    energy = energy_report(student, size)
    print(energy.table_str(max_rows=8))
    print(energy.summary())
    energy.plot(out / "energy.png")

    print("\n[3/5] reload the saved model (safetensors, no pickle) and re-evaluate it:")
    val = build_loaders(recipe.data)[1]
    reloaded_acc = evaluate(student, val, Context())
    same = reloaded_acc == result.student_acc
    print(f"      {result.student_file}: accuracy {reloaded_acc:.4f} (same as trained: {same})")

    from adderize.kernels import tvm_l1

    tvm_error = None
    if tvm_l1.available():
        from adderize.deploy import compile_model

        print("\n[4/5] compile the adder model with TVM (Relax) and compare with PyTorch:")
        lib = out / "student.so"
        compiled, creport = compile_model(student, size, out=lib)
        tvm_error = creport.max_abs_error
        print(f"      {creport.summary()}")
        assert compiled is not None
        print(f"      {lib}: median latency {sorted(compiled.latency(10))[5] * 1e3:.2f} ms")
    else:
        print(f"\n[4/5] TVM unavailable ({tvm_l1.unavailable_reason()}): compile step skipped")

    summary = {
        "tvm_max_abs_error": tvm_error,
        "conv_accuracy": result.teacher_acc,
        "adder_accuracy": result.student_acc,
        "layers_replaced": result.replaced,
        "compute_energy_ratio": result.compute_pj / result.conv_compute_pj,
        "total_energy_ratio": result.energy_pj / result.conv_energy_pj,
        "run_dir": result.run_dir,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\n[5/5] conv accuracy {result.teacher_acc:.4f}, adder accuracy "
        f"{result.student_acc:.4f}; compute energy {summary['compute_energy_ratio']:.3f}x "
        f"of all-conv. Written: {out / 'summary.json'}, {out / 'energy.png'}, "
        f"{Path(result.run_dir) / 'curves.png'}"
    )
    return same and (tvm_error is None or tvm_error < 1e-3)
