"""The one training loop every model goes through, so token budgets are identical.

Tokens are counted as ``batch_size x seq_len x steps`` (every position of every
sequence, pads and prefix included: the rule MDLM and Duo use, mdlm_duo.md section 1),
and the count is returned with the losses so the runner can state it in the results.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from dlmbench import distributed
from dlmbench.data import Batch
from dlmbench.ema import EMA
from dlmbench.model import Model


@dataclass
class TrainReport:
    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def build_optimizer(model: Model) -> torch.optim.Optimizer:
    """AdamW by default; ``muon`` puts 2-D hidden weights on Muon (elf.md section 4)."""
    cfg = model.config
    params = model.trainable_parameters()
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            from dlmbench.errors import ConfigError

            raise ConfigError("optimizer='muon' needs torch>=2.9 (torch.optim.Muon); use 'adamw'")
        matrices = [p for p in params if p.dim() == 2]
        others = [p for p in params if p.dim() != 2]
        return _Chained(
            [
                torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay),
                torch.optim.AdamW(others, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay),
            ]
        )
    from dlmbench.errors import ConfigError

    raise ConfigError(f"optimizer={cfg.optimizer!r} is not 'adamw' or 'muon'")


class _Chained(torch.optim.Optimizer):
    """Several optimisers stepped as one (Muon for matrices, AdamW for the rest)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults = {}
        self.state = {}

    def step(self, closure=None):  # noqa: D401
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def fit(
    model: Model,
    train: torch.Tensor,
    *,
    batch_size: int,
    steps: int,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train ``model`` for ``steps`` optimiser steps on rows of ``train`` ``(N, L)``.

    ``batch_size`` is the global batch: under torchrun each of the N ranks takes its
    ``1/N`` share of the same rows and DDP averages the gradients, so the tokens counted
    (``batch_size x L x steps``) are the same as in one process.

    Batches are drawn without replacement per epoch from a seeded permutation; the
    learning rate warms up linearly over ``config.warmup_steps`` then stays constant
    (both references); gradients are clipped at ``config.grad_clip``; when
    ``config.ema_decay > 0`` the EMA weights are copied into the model at the end.
    """
    cfg = model.config
    device = next(model.parameters()).device
    world = distributed.current()
    if batch_size % world.size:
        from dlmbench.errors import ConfigError

        raise ConfigError(f"budget.batch_size={batch_size} must be divisible by the {world.size} processes")
    torch.manual_seed(seed + world.rank)  # model noise differs per rank ...
    gen = torch.Generator().manual_seed(seed)  # ... the batch order is shared
    loss_of = distributed.LossModule(model)
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_of = torch.nn.parallel.DistributedDataParallel(loss_of, device_ids=ids, find_unused_parameters=True)
    opt = build_optimizer(model)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ema = EMA(model.trainable_parameters(), cfg.ema_decay) if cfg.ema_decay > 0 else None
    model.on_fit_start(steps)
    model.train()
    report = TrainReport(steps=steps, tokens=batch_size * train.shape[1] * steps)
    order = torch.randperm(train.shape[0], generator=gen)
    cursor = 0
    start = time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > order.numel():
            order, cursor = torch.randperm(train.shape[0], generator=gen), 0
        rows = order[cursor : cursor + batch_size][world.rank :: world.size]  # this rank's share
        cursor += batch_size
        scale = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        loss = loss_of(Batch(train[rows].to(device)))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{model.name}: non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip and cfg.grad_clip > 0 and not math.isinf(cfg.grad_clip):
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update()
        report.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, report.losses[-1])
    if ema is not None:
        ema.copy_to_model()
    model.eval()
    report.seconds = time.perf_counter() - start
    return report
