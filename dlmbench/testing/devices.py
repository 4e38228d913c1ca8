"""The meta device as a CPU stand-in for an accelerator.

A tensor made on torch's default device instead of its data's (``torch.rand(n)`` where
``torch.rand(n, device=x.device)`` was meant) works on a CPU-only machine and breaks on a
GPU. With the default device set to meta and the data on the CPU, such a tensor lands on
meta and the computation fails or changes, while code that follows its data gives the
CPU result unchanged: :func:`on_meta_default` runs a function both ways to show which.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def on_meta_default(fn: Callable[[], T], seed: int) -> tuple[T, T]:
    """``fn()`` under ``torch.manual_seed(seed)``, then again with the default device set
    to meta: ``(expected, got)``, equal when ``fn`` makes every tensor on its data's device."""
    torch.manual_seed(seed)
    expected = fn()
    torch.manual_seed(seed)
    with torch.device("meta"):
        got = fn()
    return expected, got


class ZeroDenoiser:
    """A discrete model's ``conditioning`` and ``network`` that follow their input's device:
    the network gives zero logits over ``vocab_size`` ids, and ``times`` keeps every time
    tensor the conditioning received, for a test to check where the sampler made it."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.times = vocab_size, []

    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        self.times.append(t)
        return torch.zeros_like(t, dtype=torch.float32)

    def network(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, self.vocab_size, device=x.device)
