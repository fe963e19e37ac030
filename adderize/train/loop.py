"""One training phase: the step, the epoch loop with checkpoints and resume (the objective
is :mod:`adderize.train.objective`'s).

:func:`run_phase` trains a model for a :class:`Phase` inside a run directory (the conv
teacher, or the converted student with the papers' scheme and the anneal), writing a
checkpoint after every epoch and continuing from it when resumed; :func:`evaluate` scores a
model. :func:`adderize.train.finetune.finetune` (the recipe-level run) and the operator
search's trials are built on these.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adderize._errors import AdderizeError
from adderize.train.adaptive_lr import AdaptiveLRScaling
from adderize.train.anneal import Anneal, calibrate
from adderize.train.calibrate import recalibrate_bn
from adderize.train.checkpoint import (
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
    write_metrics,
)
from adderize.train.distributed import Context
from adderize.train.gptq import round_shift_weights
from adderize.train.objective import Objective, phase_objective
from adderize.train.objective import mixup as make_mixup
from adderize.train.recipe import Recipe
from adderize.train.refit import reconstruct
from adderize.train.schedule import LpSchedule

__all__ = ["Phase", "evaluate", "run_phase", "train_step"]

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- one phase
@dataclass
class Phase:
    """One training run inside the run directory: ``teacher`` (conv) or ``student``."""

    name: str
    epochs: int
    lr: float
    scheme: bool  # the papers' adaptive LR and p schedule
    anneal: bool = False  # blend from the conv model (converted with preserve=True)


def _batches(
    loader: Any, ctx: Context, desc: str, progress: bool, total: int | None = None
) -> Iterator[Any]:
    """``loader``'s items, behind a progress bar on the main process when ``progress``."""
    if not (progress and ctx.main):
        yield from loader
        return
    from tqdm.auto import tqdm

    with tqdm(loader, desc=desc, total=total, leave=False, dynamic_ncols=True) as bar:
        yield from bar


def _inputs(loader: Any, ctx: Context, steps: int, progress: bool) -> Iterator[torch.Tensor]:
    """``steps`` input batches on the device, the loader repeated as often as needed."""

    def endless() -> Iterator[torch.Tensor]:
        while True:
            for x, _ in loader:
                yield x.to(ctx.device)

    return _batches(itertools.islice(endless(), steps), ctx, "refit", progress, total=steps)


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
            batches = [
                x.to(ctx.device) for x, _ in itertools.islice(train_loader, cfg.calibration_batches)
            ]
            if cfg.gptq:
                round_shift_weights(model, batches)
            calibrate(model, batches)
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


def _resume(
    state: _PhaseState, path: Path, phase: Phase, history: list[dict[str, Any]], ctx: Context
) -> int:
    """Restore the phase from its checkpoint; returns the epochs already done."""
    saved = load_checkpoint(path)
    try:
        state.load_state_dict(saved)
        set_rng_state(saved["rng"])
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
    mixup = make_mixup(recipe)
    objective, remove_taps = phase_objective(
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
            write_metrics(run_dir, history)
            checkpoint = {"epoch": epoch + 1, **state.state_dict(), "rng": rng_state()}
            atomic_save({**checkpoint, "history": rows}, ckpt_path)
        ctx.barrier()
    remove_taps()
    return state.ema.module if state.ema is not None else model
