"""Exponential moving average of weights, used for evaluation where the reference does.

Both reference codebases (MDLM/Duo `configs/config.yaml`; ELF paper Table 4) evaluate EMA weights
and warm the decay up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, which
also keeps short CPU budgets meaningful.
"""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.updates = 0
        self.parameters = list(parameters)
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.parameters):
            s.lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the live parameters with the averages (end of training)."""
        for s, p in zip(self.shadow, self.parameters):
            p.copy_(s)
