"""The one training loop every model goes through, so token budgets are identical.

Tokens are counted as ``batch_size x seq_len x steps`` (every position of every
sequence, pads and prefix included: the rule MDLM and Duo use, Duo appendix C.5),
and the count is returned with the losses so the runner can state it in the results.

GPU fast path (all off by default, identical results on CPU): ``precision="bf16"`` runs
the loss under ``torch.autocast`` (bfloat16 matmuls, float32 weights and optimiser);
:func:`compile_network` compiles the children of ``model.network`` (never the network
itself, so the core's NFE pre-hook still sees every call); on CUDA batches are copied
from pinned memory and the per-step losses stay on the device, read back (and checked
for finiteness) every ``sync_every`` steps instead of syncing the host twice per step.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from dlmbench import distributed
from dlmbench.data import Batch
from dlmbench.ema import EMA
from dlmbench.model import Model


PRECISIONS = ("fp32", "bf16")
Precision = Literal["fp32", "bf16"]


@dataclass
class TrainReport:
    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    first_step_seconds: float | None = None  # includes torch.compile's compilation when on
    median_step_seconds: float | None = None  # median over steps 2..N (None with one step)
    prepared: dict = field(default_factory=dict)  # what model.prepare returned

    @property
    def compile_seconds(self) -> float | None:
        """First step minus the median step: the one-off cost (compilation, warm-up)."""
        if self.first_step_seconds is None or self.median_step_seconds is None:
            return None
        return self.first_step_seconds - self.median_step_seconds


def autocast(device: torch.device | str, precision: str = "fp32"):
    """``torch.autocast(device_type, bfloat16)`` for ``"bf16"``, a no-op for ``"fp32"``.

    Autocast only changes the dtype of autocast-eligible ops (matmuls, attention...);
    weights, optimiser state and float64 sampling noise are untouched.
    """
    if precision not in PRECISIONS:
        from dlmbench.errors import ConfigError

        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def compile_network(model: Model, **options) -> list[str]:
    """``torch.compile`` the children of ``model.network`` in place; returns their names.

    The network module itself stays eager, so the forward pre-hook :mod:`dlmbench.nfe`
    puts on it fires on every call. ``Module.compile`` keeps parameter names (no
    ``_orig_mod.`` prefix), so checkpoints are unchanged. Containers without a forward
    (``ModuleList``/``ModuleDict``) are descended into.
    """
    network = model.network
    compiled: list[str] = []

    def visit(module: torch.nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
                visit(child, f"{prefix}{name}.")
            elif child is not network:
                child.compile(**options)
                compiled.append(prefix + name)

    visit(network, "")
    return compiled


def build_optimizer(model: Model) -> torch.optim.Optimizer:
    """AdamW by default; ``muon`` puts 2-D weights on ``torch.optim.Muon`` and the rest on AdamW;
    ``muon-optax`` is ``optax.contrib.muon`` as ELF's reference trains with it
    (:class:`dlmbench.muon.MuonOptax`: 2-D weights on Muon, the rest on Nesterov-Adam with
    ``betas``; ``weight_decay`` on the matrices only, as optax's default).
    """
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
    if cfg.optimizer == "muon-optax":
        from dlmbench.muon import MuonOptax, param_groups

        return MuonOptax(param_groups(model, params), lr=cfg.lr, weight_decay=cfg.weight_decay,
                         adam_betas=cfg.betas)
    from dlmbench.errors import ConfigError

    raise ConfigError(f"optimizer={cfg.optimizer!r} is not 'adamw', 'muon' or 'muon-optax'")


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
    precision: Precision = "fp32",
    sync_every: int | None = None,
) -> TrainReport:
    """Train ``model`` for ``steps`` optimiser steps on rows of ``train`` ``(N, L)``.

    ``batch_size`` is the global batch: under torchrun each of the N ranks takes its
    ``1/N`` share of the same rows and DDP averages the gradients, so the tokens counted
    (``batch_size x L x steps``) are the same as in one process.

    Batches are drawn without replacement per epoch from a seeded permutation; the
    learning rate warms up linearly over ``config.warmup_steps`` then stays constant
    (both references); gradients are clipped at ``config.grad_clip``; when
    ``config.ema_decay > 0`` the EMA weights are copied into the model at the end.

    ``precision="bf16"`` computes the loss under bfloat16 autocast. Losses stay on the
    device and are read back every ``sync_every`` steps (default 1 on CPU, 25 on CUDA),
    after the first step and at the end; a non-finite loss raises FloatingPointError
    naming its step at that read-back. ``progress(step, loss)`` is called once per step,
    in order, at read-back. The report holds the first step's wall time and the median of
    the others (on CUDA, each step of a read-back window is given the window's mean).

    ``model.prepare(train, seed)`` runs first (ELF's encoder pretraining, for one); what it
    returns is kept in ``report.prepared`` and its time is not in ``report.seconds``.
    """
    cfg = model.config
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    autocast(device, precision)  # validates the name before any work
    if sync_every is None:
        sync_every = 25 if cuda else 1
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    world = distributed.current()
    if batch_size % world.size:
        from dlmbench.errors import ConfigError

        raise ConfigError(f"budget.batch_size={batch_size} must be divisible by the {world.size} processes")
    prepared = model.prepare(train, seed)  # before the optimiser and DDP (which broadcasts rank 0's state)
    torch.manual_seed(seed + world.rank)  # model noise differs per rank ...
    gen = torch.Generator().manual_seed(seed)  # ... the batch order is shared
    loss_of = distributed.LossModule(model)
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_of = torch.nn.parallel.DistributedDataParallel(loss_of, device_ids=ids, find_unused_parameters=True)
    opt = build_optimizer(model)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ema = EMA(model.trainable_parameters(), cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    model.on_fit_start(steps)
    model.train()
    report = TrainReport(steps=steps, tokens=batch_size * train.shape[1] * steps, prepared=prepared)
    order = torch.randperm(train.shape[0], generator=gen)
    cursor = 0
    pending: list[torch.Tensor] = []  # detached device losses not yet read back
    step_seconds: list[float] = []

    def read_back(window_start: float) -> float:
        """One host sync: check, record and report the pending losses; returns the time."""
        if cuda:
            torch.cuda.synchronize(device)
        values = torch.stack(pending).float().cpu().tolist()
        now = time.perf_counter()
        step_seconds.extend([(now - window_start) / len(values)] * len(values))
        first = len(report.losses)
        pending.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(f"{model.name}: non-finite loss {value} at step {first + i}")
            report.losses.append(value)
            if progress is not None:
                progress(first + i, value)
        return time.perf_counter()  # the callbacks are not step time

    start = window = time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > order.numel():
            order, cursor = torch.randperm(train.shape[0], generator=gen), 0
        rows = order[cursor : cursor + batch_size][world.rank :: world.size]  # this rank's share
        cursor += batch_size
        scale = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        tokens = train[rows]
        if cuda and tokens.device.type == "cpu":
            tokens = tokens.pin_memory().to(device, non_blocking=True)
        else:
            tokens = tokens.to(device)
        with autocast(device, precision):
            loss = loss_of(Batch(tokens))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip and cfg.grad_clip > 0 and not math.isinf(cfg.grad_clip):
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update()
        pending.append(loss.detach())
        if step == 0 or (step + 1) % sync_every == 0 or step == steps - 1:
            window = read_back(window)
    if ema is not None:
        ema.copy_to_model()
    model.eval()
    report.seconds = time.perf_counter() - start
    if step_seconds:
        report.first_step_seconds = step_seconds[0]
        if len(step_seconds) > 1:
            report.median_step_seconds = statistics.median(step_seconds[1:])
    return report
