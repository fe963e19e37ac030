"""BatchNorm re-calibration: after conversion, the conv model's running statistics no longer
describe the adder layers' outputs (``-sum |x - w|`` is large and negative)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from adderize._errors import AdderizeError

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean/var as the exact average over ``batches``
    (inputs only; weights untouched). Returns the number of BatchNorm layers reset; the
    model's train/eval mode is restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches
    model.train()
    seen = 0
    for x in batches:
        model(x)
        seen += 1
    if norms and not seen:
        raise AdderizeError("recalibrate_bn needs at least one batch")
    for m, (momentum, _) in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)
