"""Counting function evaluations the same way for every model.

The counter hooks the forward call of ``model.network`` and adds up the number of
sequences each call processes (the batch size of its first tensor argument). Divided by
the number of samples requested this is the NFE per sample: a classifier-free-guidance
step that runs a conditional and an unconditional pass counts 2 whether the two passes
are batched together or not, and a step served from a cache counts 0.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class NFECounter:
    calls: int = 0
    rows: int = 0

    def per_sample(self, num_samples: int) -> float:
        return self.rows / max(num_samples, 1)


def _batch_rows(args: tuple, kwargs: dict) -> int:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise TypeError("the network's forward must take a batch-first tensor argument")


@contextmanager
def count_nfe(model: torch.nn.Module) -> Iterator[NFECounter]:
    """Count forward calls of ``model.network`` inside the ``with`` block."""
    counter = NFECounter()
    network = getattr(model, "network", model)

    def hook(_module, args, kwargs):
        counter.calls += 1
        counter.rows += _batch_rows(args, kwargs)

    handle = network.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()
