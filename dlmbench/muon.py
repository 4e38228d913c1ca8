"""Muon as ``optax.contrib.muon`` computes it, the optimiser ELF's reference trains with.

ELF (``lillian039/ELF`` main @ 5098bf2, ``src/utils/train_utils.py::get_optimizer``) builds
``optax.chain(optax.clip_by_global_norm(1.0), optax.contrib.muon(learning_rate=lr_schedule))``:
every Muon argument at its default; ``weight_decay`` and ``adam_b1``/``adam_b2`` of its
config go to the AdamW option only. The rules below follow ``optax/contrib/_muon.py``
(``google-deepmind/optax@2edbcbe``; the default path is the same since v0.2.5, ELF pins
``optax>=0.2.5``). ``t`` counts this optimiser's steps from 1, ``g`` is the (clipped) gradient.

Matrices (``ndim == 2``, optax's default partition; biases, norms and ELF's 3-D token
tables go to Adam):

* ``mu = beta * mu + (1 - beta) * g`` with ``beta = 0.95``;
* Nesterov with bias correction: ``m = beta * mu / (1 - beta**(t+1)) + (1 - beta) * g / (1 - beta**t)``;
* Newton-Schulz in fp32: transpose when rows > cols, ``X = m / (||m||_F + 1e-8)``, then 5 times
  ``A = X X^T; X = a X + (b A + c A A) X`` with ``(a, b, c) = (3.4445, -4.7750, 2.0315)``,
  transposed back;
* width scale ``sqrt(max(1, fan_out / fan_in))``, ``fan_in`` being the reduction axis: for an
  ``nn.Linear`` weight ``(out, in)`` that is its second axis; optax sees flax's ``(in, out)``
  kernels, so a 2-D tensor that is not a Linear weight (an embedding ``(vocab, dim)``, a bare
  kernel) is read as ``(in, out)`` (group key ``layout``);
* ``p -= lr * (scale * X + weight_decay * p)`` (decoupled decay added before the learning rate).

Everything else, Nesterov-Adam (``optax.adamw(..., nesterov=True)``, ``eps`` shared with Muon):

* ``mu = b1 mu + (1 - b1) g``, ``nu = b2 nu + (1 - b2) g^2`` with ``(b1, b2) = (0.9, 0.999)``;
* ``m = b1 * mu / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)``, ``v = nu / (1 - b2**t)``;
* ``p -= lr * (m / (sqrt(v + eps_root) + eps) + adam_weight_decay * p)``.

A parameter without a gradient is stepped with a zero gradient, as JAX differentiates every
leaf (its moments still decay and it still moves).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal

import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)
Layout = Literal["out_in", "in_out"]


def orthogonalize(update: torch.Tensor, steps: int = 5, eps: float = 1e-8,
                  coeffs: tuple[float, float, float] = NS_COEFFS) -> torch.Tensor:
    """optax's ``orthogonalize_via_newton_schulz`` (frobenius preconditioning), in fp32."""
    a, b, c = coeffs
    x = update.to(torch.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (torch.linalg.matrix_norm(x, ord="fro") + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def width_scale(shape: torch.Size | tuple[int, ...], layout: Layout) -> float:
    """``sqrt(max(1, fan_out / fan_in))`` for a matrix stored as ``layout``."""
    rows, cols = shape
    fan_in, fan_out = (cols, rows) if layout == "out_in" else (rows, cols)
    return math.sqrt(max(1.0, fan_out / fan_in))


def param_groups(module: torch.nn.Module, params: Iterable[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """optax's default partition of ``params``: 2-D tensors on Muon, the rest on Adam.

    ``nn.Linear`` weights are ``(out, in)``; any other 2-D tensor is read as flax lays it
    out, ``(in, out)`` (``nn.Embedding`` is ``(vocab, dim)`` in both)."""
    linear = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear)}
    groups: dict[str, list[torch.nn.Parameter]] = {"out_in": [], "in_out": [], "adam": []}
    for p in params:
        key = "adam" if p.dim() != 2 else ("out_in" if id(p) in linear else "in_out")
        groups[key].append(p)
    built = [
        {"params": groups["out_in"], "muon": True, "layout": "out_in"},
        {"params": groups["in_out"], "muon": True, "layout": "in_out"},
        {"params": groups["adam"], "muon": False},
    ]
    return [g for g in built if g["params"]]


class MuonOptax(torch.optim.Optimizer):
    """Muon on the groups marked ``muon`` and Nesterov-Adam on the others, as optax does.

    Groups carry ``muon`` (bool) and, for Muon, ``layout`` (``"out_in"``, the default, or
    ``"in_out"``); :func:`param_groups` builds them. Defaults are ``optax.contrib.muon``'s.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        *,
        beta: float = 0.95,
        ns_steps: int = 5,
        ns_coeffs: tuple[float, float, float] = NS_COEFFS,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps_root: float = 0.0,
        adam_weight_decay: float = 0.0,
    ):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        defaults = dict(lr=lr, beta=beta, ns_steps=ns_steps, ns_coeffs=tuple(ns_coeffs), eps=eps,
                        weight_decay=weight_decay, nesterov=nesterov, adam_betas=tuple(adam_betas),
                        adam_eps_root=adam_eps_root, adam_weight_decay=adam_weight_decay,
                        muon=None, layout="out_in")
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] is None:  # plain parameter lists: optax's ndim rule
                raise ValueError("every group needs muon=True/False; build them with dlmbench.muon.param_groups")
            if group["muon"]:
                if group["layout"] not in ("out_in", "in_out"):
                    raise ValueError(f"layout={group['layout']!r} is not 'out_in' or 'in_out'")
                bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if bad:
                    raise ValueError(f"Muon groups take matrices only, got shapes {bad}")

    @staticmethod
    def _momentum(grad: torch.Tensor, mu: torch.Tensor, beta: float, t: int, nesterov: bool) -> torch.Tensor:
        """Update ``mu`` in place; return its bias-corrected (Nesterov) estimate."""
        mu.mul_(beta).add_(grad, alpha=1 - beta)
        if not nesterov:
            return mu / (1 - beta**t)
        return beta * (mu / (1 - beta ** (t + 1))) + (1 - beta) * (grad / (1 - beta**t))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["mu"] = torch.zeros_like(p)
                    if not group["muon"]:
                        state["nu"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                if group["muon"]:
                    m = self._momentum(grad, state["mu"], group["beta"], t, group["nesterov"])
                    update = orthogonalize(m, group["ns_steps"], group["eps"], group["ns_coeffs"])
                    update = update.to(p.dtype) * width_scale(p.shape, group["layout"])
                    decay = group["weight_decay"]
                else:
                    b1, b2 = group["adam_betas"]
                    m = self._momentum(grad, state["mu"], b1, t, group["nesterov"])
                    nu = state["nu"]
                    nu.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    v = nu / (1 - b2**t)
                    update = m / ((v + group["adam_eps_root"]).sqrt() + group["eps"])
                    decay = group["adam_weight_decay"]
                if decay:
                    update = update + decay * p
                p.add_(update, alpha=-lr)
        return loss
