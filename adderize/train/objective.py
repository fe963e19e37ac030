"""What a training phase minimises: the label loss, distillation from the teacher (logits,
kernel features), the anneal's local reconstruction term; and timm's mixup / cutmix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adderize.train.anneal import Anneal
from adderize.train.distill import FeatureTap, default_feature_names, kernel_loss, logit_kd
from adderize.train.recipe import Recipe

__all__ = ["Objective", "make_objective", "mixup", "phase_objective"]

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


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


def mixup(recipe: Recipe) -> Any:
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


def phase_objective(
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
