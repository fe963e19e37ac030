"""The process group of a run: one process, or torchrun's (gloo on CPU, nccl on GPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["Context", "init_context"]


@dataclass
class Context:
    """Process-group facts of this run (world = 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # init_context created the process group, so closing ends it

    def __enter__(self) -> Context:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """End the process group this context created: after a barrier when the run succeeded.

        Processes that exit with gloo's group still up can abort in its teardown ("terminate
        called without an active exception") while a peer is still finishing.
        """
        if not (self.owns_group and dist.is_initialized()):
            return
        if exc_type is None:
            dist.barrier()
        dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_context() -> Context:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPUs), if any.

    Use it as ``with init_context() as ctx:`` so that a group it created is ended cleanly.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    cuda = torch.cuda.is_available()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    return Context(rank=rank, world=world, device=device, owns_group=owns)
