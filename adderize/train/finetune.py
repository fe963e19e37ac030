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

import contextlib
import copy
import csv
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from adderize._errors import AdderizeError, brief
from adderize.passes.convert import BLEND_ATTR
from adderize.train.adaptive_lr import AdaptiveLRScaling, adder_weights
from adderize.train.anneal import Anneal, calibrate, reconstruct
from adderize.train.calibrate import recalibrate_bn
from adderize.train.distill import (
    FeatureTap,
    default_feature_names,
    kernel_loss,
    logit_kd,
)
from adderize.train.recipe import Recipe
from adderize.train.schedule import LpSchedule

__all__ = ["FinetuneResult", "finetune", "plot_curves", "train_step"]

log = logging.getLogger(__name__)

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Context:
    """Process-group facts of this run (world = 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_context() -> Context:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPUs), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


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

    def summary(self) -> str:
        return (
            f"conv teacher accuracy {self.teacher_acc:.4f}; adder student accuracy "
            f"{self.student_acc:.4f} ({self.replaced} layers replaced); compute energy "
            f"{self.compute_pj / 1e6:.2f} uJ vs {self.conv_compute_pj / 1e6:.2f} uJ all-conv "
            f"({self.compute_pj / self.conv_compute_pj:.3f}x), with memory "
            f"{self.energy_pj / self.conv_energy_pj:.3f}x"
        )


# --------------------------------------------------------------------------- training step
def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: str = "none",
) -> float:
    """One optimisation step; returns the loss. ``net`` may be DDP-wrapped."""
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if amp == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        loss = objective(net, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def make_objective(
    recipe: Recipe, student: nn.Module, teacher: nn.Module | None, soft_targets: bool
) -> tuple[Objective, Callable[[], None]]:
    """The loss (labels, plus distillation from ``teacher``) and a clean-up function."""
    cfg = recipe.distill
    if soft_targets:
        from timm.loss import SoftTargetCrossEntropy

        label_loss: Callable[..., torch.Tensor] = SoftTargetCrossEntropy()
    else:

        def label_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y, label_smoothing=recipe.data.label_smoothing)

    if teacher is None or cfg.kind == "none":
        return (lambda net, x, y: label_loss(net(x).float(), y)), lambda: None

    teacher.eval()
    taps: tuple[FeatureTap, FeatureTap] | None = None
    if cfg.kind == "kernel":
        names = cfg.features or default_feature_names(teacher)
        taps = (FeatureTap(student, names), FeatureTap(teacher, names))

    def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = net(x).float()
        with torch.no_grad():
            target = teacher(x).float()
        loss = (1 - cfg.alpha) * label_loss(out, y) + cfg.alpha * logit_kd(
            out, target, cfg.temperature
        )
        if taps is not None:
            loss = loss + cfg.feature_weight * kernel_loss(taps[0].pop(), taps[1].pop())
        return loss

    def remove() -> None:
        if taps is not None:
            taps[0].remove()
            taps[1].remove()

    return objective, remove


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, ctx: Context) -> float:
    """Top-1 accuracy over the (sharded) validation loader, exact across ranks."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    for x, y in loader:
        out = model(x.to(ctx.device))
        counts[0] += (out.argmax(1).cpu() == y).sum()
        counts[1] += len(y)
    if ctx.world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


# ----------------------------------------------------------------------- checkpointing
def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": list(random.getstate()),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file then rename: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or pickled code refused
        raise AdderizeError(
            f"{path} is not a checkpoint adderize can resume from ({type(e).__name__}: "
            f"{brief(e)}); delete it to start the phase over"
        ) from None
    if not isinstance(state, dict):
        raise AdderizeError(f"{path}: a checkpoint is a mapping, got {type(state).__name__}")
    return state


# ----------------------------------------------------------------------------- one phase
@dataclass
class Phase:
    """One training run inside the run directory: ``teacher`` (conv) or ``student``."""

    name: str
    epochs: int
    lr: float
    scheme: bool  # the papers' adaptive LR and p schedule
    anneal: bool = False  # blend from the conv model (converted with preserve=True)


def _log(run_dir: Path, history: list[dict[str, Any]]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=1))
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _batches(loader: Any, ctx: Context, desc: str, progress: bool) -> Iterator[Any]:
    if not (progress and ctx.main):
        yield from loader
        return
    from tqdm.auto import tqdm

    with tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) as bar:
        yield from bar


def _inputs(loader: Any, ctx: Context, steps: int, progress: bool) -> Iterator[torch.Tensor]:
    """``steps`` input batches on the device, the loader repeated as often as needed."""

    def endless() -> Iterator[torch.Tensor]:
        while True:
            for x, _ in loader:
                yield x.to(ctx.device)

    batches = itertools.islice(endless(), steps)
    if not (progress and ctx.main):
        return batches
    from tqdm.auto import tqdm

    return iter(tqdm(batches, total=steps, desc="refit", leave=False, dynamic_ncols=True))


@dataclass
class _PhaseState:
    """What a phase trains with; all of it is in the phase's checkpoint after every epoch."""

    model: nn.Module
    optimizer: Any
    scheduler: Any
    lp: LpSchedule | None
    anneal: Anneal | None
    ema_decay: float
    ema: Any = None

    def refresh_ema(self) -> None:
        """Start the EMA once there is an op model to average (after the anneal)."""
        ready = self.ema_decay and (self.anneal is None or self.anneal.finalized)
        if self.ema is None and ready:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=self.ema_decay)

    def after_step(self, step: int) -> None:
        """Advance every schedule after optimizer step ``step`` (counted from 1)."""
        self.scheduler.step_update(step)
        if self.lp is not None:
            self.lp.step()
        if self.anneal is not None and not self.anneal.finalized:
            self.anneal.step()
            self.refresh_ema()
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lp": self.lp.state_dict() if self.lp is not None else None,
            "anneal": self.anneal.state_dict() if self.anneal is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.anneal is not None:  # first: a finished anneal changes which tensors exist
            self.anneal.load_state_dict(state["anneal"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.refresh_ema()
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.lp is not None:
            self.lp.load_state_dict(state["lp"])


def _phase_state(
    phase: Phase,
    model: nn.Module,
    recipe: Recipe,
    train_loader: Any,
    ctx: Context,
    fresh: bool,
    progress: bool = False,
) -> _PhaseState:
    """Optimizer, LR schedule, the papers' scheme (adaptive LR, p schedule) and the anneal
    (calibrated on training batches when ``fresh``; a resumed one comes from the
    checkpoint). Call before DDP wraps the model: it broadcasts rank 0's calibration."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    updates = len(train_loader)
    anneal = None
    if phase.anneal:
        cfg = recipe.anneal
        if fresh:
            if cfg.refit_steps:
                inputs = _inputs(train_loader, ctx, cfg.refit_steps, progress)
                refit = reconstruct(model, inputs, cfg.refit_steps, cfg.refit_lr, cfg.refit_chain)
                if ctx.main and refit:
                    before, after = (sum(r[i] for r in refit.values()) / len(refit) for i in (0, 1))
                    log.info(
                        "refit %d op layer(s) to their float outputs in %d steps: mean "
                        "residual %.3f -> %.3f", len(refit), cfg.refit_steps, before, after,
                    )  # fmt: skip
            batches = itertools.islice(train_loader, cfg.calibration_batches)
            calibrate(model, (x.to(ctx.device) for x, _ in batches))
        total = phase.epochs * updates
        anneal = Anneal(model, max(1, min(total, round(cfg.fraction * total))), cfg.shape)
    o = recipe.optim
    optimizer = create_optimizer_v2(
        model, opt=o.opt, lr=phase.lr, weight_decay=o.weight_decay, momentum=o.momentum
    )
    lp = None
    if phase.scheme:
        a = recipe.adder
        AdaptiveLRScaling(model, eta=a.eta, per=a.eta_per).attach(optimizer)  # type: ignore[arg-type]
        lp = LpSchedule(
            model, decay_steps=round(a.p_decay * phase.epochs * updates), start=a.p_start,
            end=a.p_end,
        )  # fmt: skip
    s = recipe.sched
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=s.sched,
        num_epochs=phase.epochs,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        min_lr=s.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates,
    )
    state = _PhaseState(model, optimizer, scheduler, lp, anneal, recipe.ema)
    state.refresh_ema()
    return state


def _mixup(recipe: Recipe) -> Any:
    d = recipe.data
    if d.mixup <= 0 and d.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=d.mixup,
        cutmix_alpha=d.cutmix,
        label_smoothing=d.label_smoothing,
        num_classes=recipe.model.num_classes,
    )


def _phase_objective(
    recipe: Recipe, model: nn.Module, teacher: nn.Module | None, anneal: Anneal | None, soft: bool
) -> tuple[Objective, Callable[[], None]]:
    """The task/distillation objective, plus the anneal's local reconstruction loss."""
    objective, remove_taps = make_objective(recipe, model, teacher, soft_targets=soft)
    if anneal is None or not recipe.anneal.local_weight:
        return objective, remove_taps
    weight = recipe.anneal.local_weight

    def with_local(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return objective(net, x, y) + weight * anneal.loss()

    return with_local, remove_taps


def _resume(
    state: _PhaseState, path: Path, phase: Phase, history: list[dict[str, Any]], ctx: Context
) -> int:
    """Restore the phase from its checkpoint; returns the epochs already done."""
    saved = load_checkpoint(path)
    try:
        state.load_state_dict(saved)
        _set_rng_state(saved["rng"])
        start = int(saved["epoch"])
        history[:] = [r for r in history if r["phase"] != phase.name] + list(saved["history"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise AdderizeError(
            f"{path} does not match this run ({type(e).__name__}: {e}); delete it "
            "to start the phase over, or resume with the recipe that wrote it"
        ) from None
    if ctx.main:
        log.info("resumed %s from %s after epoch %d", phase.name, path, start)
    return start


def _epoch_line(phase: Phase, row: dict[str, Any]) -> str:
    return (
        f"{phase.name} epoch {row['epoch']}/{phase.epochs}: loss {row['train_loss']:.4f} "
        f"val acc {row['val_acc']:.4f}"
        + (f" (EMA {row['ema_acc']:.4f})" if "ema_acc" in row else "")
        + (f" p {row['p']:.3f}" if row["p"] is not None else "")
        + (f" blend {row['blend']:.3f}" if row["blend"] is not None else "")
        + f" [{row['seconds']:.1f} s]"
    )


def run_phase(
    phase: Phase,
    model: nn.Module,
    recipe: Recipe,
    loaders: tuple[Any, Any],
    run_dir: Path,
    ctx: Context,
    *,
    teacher: nn.Module | None = None,
    history: list[dict[str, Any]],
    resume: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` for ``phase.epochs``; returns the model to evaluate (EMA if on)."""
    train_loader, val_loader = loaders
    updates = len(train_loader)
    ckpt_path = run_dir / f"checkpoint-{phase.name}.pt"
    resuming = resume and ckpt_path.is_file()
    setup = time.perf_counter()  # a fresh phase's first epoch counts the refit/calibration
    state = _phase_state(
        phase, model, recipe, train_loader, ctx, fresh=not resuming, progress=progress
    )
    net: nn.Module = model
    if ctx.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    mixup = _mixup(recipe)
    objective, remove_taps = _phase_objective(
        recipe, model, teacher, state.anneal, soft=mixup is not None
    )
    start = 0
    if resuming:
        start = _resume(state, ckpt_path, phase, history, ctx)
    else:  # a phase started over (no checkpoint): its old rows in metrics.json are stale
        history[:] = [r for r in history if r["phase"] != phase.name]

    rows = [r for r in history if r["phase"] == phase.name]
    for epoch in range(start, phase.epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        net.train()
        tic = setup if epoch == 0 and not resuming else time.perf_counter()
        total, count = 0.0, 0
        desc = f"{phase.name} {epoch + 1}/{phase.epochs}"
        for i, (x, y) in enumerate(_batches(train_loader, ctx, desc, progress)):
            x, y = x.to(ctx.device), y.to(ctx.device)
            if mixup is not None:
                x, y = mixup(x, y)
            total += train_step(net, state.optimizer, objective, x, y, recipe.amp)
            count += 1
            state.after_step(epoch * updates + i + 1)
        if phase.scheme and recipe.bn_recalibration:
            batches = itertools.islice(train_loader, recipe.bn_recalibration)
            recalibrate_bn(model, (x.to(ctx.device) for x, _ in batches))
        row: dict[str, Any] = {
            "phase": phase.name,
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            "val_acc": evaluate(model, val_loader, ctx),
            "lr": state.optimizer.param_groups[0]["lr"],
            "p": state.lp.p if state.lp is not None else None,
            "blend": state.anneal.blend if state.anneal is not None else None,
            "seconds": time.perf_counter() - tic,
        }
        if state.ema is not None:
            row["ema_acc"] = evaluate(state.ema.module, val_loader, ctx)
        rows.append(row)
        history.append(row)
        if ctx.main:
            log.info("%s", _epoch_line(phase, row))
            _log(run_dir, history)
            checkpoint = {"epoch": epoch + 1, **state.state_dict(), "rng": _rng_state()}
            atomic_save({**checkpoint, "history": rows}, ckpt_path)
        ctx.barrier()
    remove_taps()
    return state.ema.module if state.ema is not None else model


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
    from adderize.energy import energy_report
    from adderize.io import save
    from adderize.passes.convert import adderize
    from adderize.train.data import build_loaders

    ctx = init_context()
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
    student, report = adderize(
        copy.deepcopy(teacher),
        recipe.ops,
        keep=recipe.keep,
        preserve=recipe.anneal.enabled and trained,
        return_report=True,
    )
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
    )
    if ctx.main:
        save(student, result.student_file, model_name=m.name, model_kwargs=model_kwargs)
        (run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=1))
        plot_curves(history, run_dir / "curves.png", teacher_acc=teacher_acc)
        log.info("%s", result.summary())
    ctx.barrier()
    return result


def plot_curves(
    history: list[dict[str, Any]], path: str | Path, teacher_acc: float | None = None
) -> Path:
    """Validation accuracy and training loss per epoch: conv teacher vs adder student."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(10, 4))
    acc_ax, loss_ax = fig.subplots(1, 2)
    styles = {"teacher": ("conv teacher", "tab:blue"), "student": ("adder student", "tab:red")}
    for phase, (label, color) in styles.items():
        rows = [r for r in history if r["phase"] == phase]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        acc_ax.plot(epochs, [r["val_acc"] for r in rows], "o-", color=color, label=label)
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], "o-", color=color, label=label)
    if teacher_acc is not None:
        acc_ax.axhline(teacher_acc, ls="--", color="tab:blue", alpha=0.5, label="teacher final")
    acc_ax.set(xlabel="epoch", ylabel="validation top-1", title="accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss", yscale="log")
    acc_ax.legend()
    loss_ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
