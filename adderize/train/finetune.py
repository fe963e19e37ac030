"""Convert-and-finetune: the loop behind ``adderize finetune`` and ``adderize demo``.

Built on timm's parts (``create_loader``, ``create_optimizer_v2``, ``create_scheduler_v2``,
``ModelEmaV3``, ``Mixup``). One run directory holds everything:

``config.yaml`` (the resolved recipe), ``teacher.safetensors`` (the conv model, trained
first when no pretrained file is given), ``checkpoint-{teacher,student}.pt`` (written
atomically after every epoch; ``resume=True`` continues from them, restoring model,
optimizer, scheduler, EMA, p schedule and RNG state), ``metrics.csv`` / ``metrics.json``
(one row per epoch), ``curves.png``, ``student.safetensors`` (``adderize.load`` reads it)
and ``summary.json``.

Multi-process training: launch with ``torchrun --nproc_per_node N -m adderize finetune``.
Gradients are all-reduced by DDP during ``backward``; the adaptive learning rate is an
optimizer step pre-hook, so it always sees the averaged gradient.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.passes.convert import BLEND_ATTR
from adderize.train.adaptive_lr import adder_weights
from adderize.train.distributed import Context, init_context
from adderize.train.loop import Phase, evaluate, run_phase
from adderize.train.plots import plot_curves
from adderize.train.recipe import Recipe

__all__ = ["FinetuneResult", "finetune", "prepare_teacher"]

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a run produced (also written to ``summary.json``)."""

    run_dir: str
    teacher_acc: float
    student_acc: float
    student_file: str
    energy_pj: float
    conv_energy_pj: float
    compute_pj: float
    conv_compute_pj: float
    history: list[dict[str, Any]]
    replaced: int
    #: replaced layers per new layer type, e.g. ``{"Adder2d": 2, "ShiftConv2d": 50}``
    ops: dict[str, int] = field(default_factory=dict)
    #: conv/linear layers left in float (kept or skipped by the pass), by module name
    float_layers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"conv teacher accuracy {self.teacher_acc:.4f}; adder student accuracy "
            f"{self.student_acc:.4f} ({self.replaced} layers replaced); compute energy "
            f"{self.compute_pj / 1e6:.2f} uJ vs {self.conv_compute_pj / 1e6:.2f} uJ all-conv "
            f"({self.compute_pj / self.conv_compute_pj:.3f}x), with memory "
            f"{self.energy_pj / self.conv_energy_pj:.3f}x"
        )


# ------------------------------------------------------------------------------ the run
def _prepare_run_dir(recipe: Recipe, resume: bool, ctx: Context) -> Path:
    run_dir = Path(recipe.out)
    if ctx.main:
        existing = [p.name for p in (run_dir.glob("checkpoint-*.pt") if run_dir.is_dir() else [])]
        if existing and not resume:
            raise AdderizeError(
                f"{run_dir} already holds a run ({', '.join(sorted(existing))}): pass "
                "--resume to continue it, or choose another --out"
            )
        if resume and (run_dir / "config.yaml").is_file():
            saved = Recipe.load(run_dir / "config.yaml")
            if saved.to_dict() != recipe.to_dict():
                raise AdderizeError(
                    f"--resume with a recipe that differs from {run_dir / 'config.yaml'}: "
                    "resume with the same recipe and overrides"
                )
        recipe.save(run_dir / "config.yaml")
    ctx.barrier()
    return run_dir


def prepare_teacher(
    recipe: Recipe,
    loaders: tuple[Any, Any],
    run_dir: Path,
    ctx: Context,
    history: list[dict[str, Any]],
    resume: bool = False,
    progress: bool = True,
) -> nn.Module:
    """The conv teacher: the pretrained file, else ``run_dir/teacher.safetensors`` when
    resuming, else trained for ``teacher.epochs`` (and saved there)."""
    from safetensors.torch import load_model, save_model

    from adderize.io import create_float_model

    m = recipe.model
    teacher = create_float_model(
        m.name, pretrained_file=m.pretrained_file, num_classes=m.num_classes, **m.kwargs
    )
    teacher.to(ctx.device)
    teacher_file = run_dir / "teacher.safetensors"
    if m.pretrained_file is None and teacher_file.is_file() and resume:
        load_model(teacher, str(teacher_file))
    elif m.pretrained_file is None and recipe.teacher.epochs > 0:
        phase = Phase("teacher", recipe.teacher.epochs, recipe.teacher.lr, scheme=False)
        teacher = run_phase(
            phase, teacher, recipe, loaders, run_dir, ctx,
            history=history, resume=resume, progress=progress,
        )  # fmt: skip
        if ctx.main:
            save_model(teacher, str(teacher_file))
        ctx.barrier()
    return teacher.eval()


def finetune(recipe: Recipe, *, resume: bool = False, progress: bool = True) -> FinetuneResult:
    """Train (or load) the conv teacher, convert it, fine-tune the student; see module doc."""
    with init_context() as ctx:
        return _finetune(recipe, ctx, resume=resume, progress=progress)


def _finetune(recipe: Recipe, ctx: Context, *, resume: bool, progress: bool) -> FinetuneResult:
    from adderize.energy import energy_report
    from adderize.io import save
    from adderize.passes import OpMapping, adderize
    from adderize.train.auto import choose_ops
    from adderize.train.data import build_loaders

    run_dir = _prepare_run_dir(recipe, resume, ctx)
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    loaders = build_loaders(recipe.data, ctx.rank, ctx.world)
    m = recipe.model
    model_kwargs = {"num_classes": m.num_classes, **m.kwargs}
    history: list[dict[str, Any]] = []
    metrics = run_dir / "metrics.json"
    if resume and metrics.is_file():
        history = json.loads(metrics.read_text())
    teacher = prepare_teacher(recipe, loaders, run_dir, ctx, history, resume, progress)
    teacher_acc = evaluate(teacher, loaders[1], ctx)
    if ctx.main:
        log.info("conv teacher: val acc %.4f", teacher_acc)

    # a trained conv model is converted function-preserving and annealed into the student
    trained = m.pretrained_file is not None or recipe.teacher.epochs > 0
    ops: Any = recipe.ops
    choice = None
    if recipe.auto_budget:  # each layer's op from its measured sensitivity (train.auto)
        batches = itertools.islice(loaders[0], recipe.anneal.calibration_batches)
        inputs = [x.to(ctx.device) for x, _ in batches]
        choice = choose_ops(teacher, recipe.auto_budget, inputs, mapping=OpMapping.coerce(ops))
        ops = choice.mapping(OpMapping.coerce(ops))
    student, report = adderize(
        copy.deepcopy(teacher),
        ops,
        keep=recipe.keep,
        preserve=recipe.anneal.enabled and trained,
        return_report=True,
    )
    report.auto = choice
    if ctx.main and report.auto is not None:
        log.info("%s", report.auto.table())
    if ctx.main:
        log.info("%s", report.summary())
    phase = Phase(
        "student",
        recipe.epochs,
        recipe.optim.lr,
        scheme=bool(adder_weights(student)),
        anneal=hasattr(student, BLEND_ATTR),
    )
    use_teacher = teacher if recipe.distill.kind != "none" else None
    student = run_phase(
        phase, student, recipe, loaders, run_dir, ctx,
        teacher=use_teacher, history=history, resume=resume, progress=progress,
    )  # fmt: skip
    student_acc = evaluate(student, loaders[1], ctx)

    size = (1, 3, recipe.data.input_size, recipe.data.input_size)
    energy = energy_report(student.cpu(), size)
    result = FinetuneResult(
        run_dir=str(run_dir),
        teacher_acc=teacher_acc,
        student_acc=student_acc,
        student_file=str(run_dir / "student.safetensors"),
        energy_pj=energy.total_pj,
        conv_energy_pj=energy.baseline_total_pj,
        compute_pj=energy.compute_pj,
        conv_compute_pj=energy.baseline_compute_pj,
        history=history,
        replaced=len(report.replaced),
        ops=dict(Counter(r.new for r in report.replaced)),
        float_layers=[r.name for r in (*report.kept, *report.skipped)],
    )
    if ctx.main:
        save(student, result.student_file, model_name=m.name, model_kwargs=model_kwargs)
        (run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=1))
        plot_curves(history, run_dir / "curves.png", teacher_acc=teacher_acc)
        log.info("%s", result.summary())
    return result
