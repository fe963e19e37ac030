"""One DDP training step, run by tests/test_finetune.py under torchrun with 2 processes.

Each rank takes its half of a fixed batch; rank 0 saves the parameters after the step.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

import adderize
from adderize.train import AdaptiveLRScaling
from adderize.train.distributed import init_context
from adderize.train.loop import train_step


def model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    return adderize.adderize(model), torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    AdaptiveLRScaling(model, eta=0.2).attach(opt)
    return opt


def main(out: str) -> None:
    with init_context() as ctx:
        model, x, y = model_and_batch()
        net = nn.parallel.DistributedDataParallel(model)
        opt = optimizer_for(model)
        shard = slice(ctx.rank, None, ctx.world)
        train_step(net, opt, lambda n, a, b: F.cross_entropy(n(a), b), x[shard], y[shard])
        if ctx.main:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)


if __name__ == "__main__":
    main(sys.argv[1])
