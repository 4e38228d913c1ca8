"""Multi-process training and sampling with PyTorch's own engine (``torchrun``).

Under ``torchrun --nproc-per-node N -m dlmbench ...`` the environment carries
``WORLD_SIZE``/``RANK``; :func:`setup` starts the process group (NCCL on CUDA, gloo on
CPU). Training wraps the loss in DistributedDataParallel with the *global* batch split
across ranks, so the token budget is counted once; sampling gives each rank whole
micro-batches (each seeded by its own index) and gathers them, so a run under torchrun
produces exactly the records of a single-process run with the same seeds.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> World:
    """Join the process group torchrun describes; a single process is World(0, 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        # Left to interpreter shutdown, gloo's threads can abort a rank on exit
        # ("terminate called without an active exception") after a successful run.
        atexit.register(_shut_down)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(dist.get_rank(), dist.get_world_size())


def _shut_down() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def barrier() -> None:
    if current().size > 1:
        dist.barrier()


def gather_objects(obj):
    """Every rank's ``obj`` as a list ordered by rank (on every rank)."""
    world = current()
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


class LossModule(torch.nn.Module):
    """Makes ``model.loss`` the forward call, so DDP's gradient hooks see it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)
