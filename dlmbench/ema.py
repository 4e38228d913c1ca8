"""Exponential moving average of weights, used for evaluation where the reference does.

The references differ on the first updates. MDLM and Duo warm the decay up as
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (``kuleshov-group/mdlm@c112c52``
and ``s-sahoo/duo@7c9b498``, ``models/ema.py`` line 43), which also keeps short CPU
budgets meaningful; ``warmup=True``. ELF applies its fixed ``ema_decay1`` (0.9999) from the
first optimiser step, ``ema = decay * ema + (1 - decay) * params`` starting from the initial
weights (``lillian039/ELF`` main ``src/train_step.py::ema_update``; ``pytorch_elf@b29d883``
``src/utils/train_utils.py::ema_update``); ``warmup=False``.
"""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, parameters: list[torch.nn.Parameter], decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.parameters = list(parameters)
        self.shadow = [p.detach().clone() for p in self.parameters]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if not self.warmup:
            return self.decay
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        self.updates += 1
        for s, p in zip(self.shadow, self.parameters):
            s.lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the live parameters with the averages (end of training)."""
        for s, p in zip(self.shadow, self.parameters):
            p.copy_(s)
