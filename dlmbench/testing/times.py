"""A training-time distribution that returns chosen times, for losses checked at a given t."""

from __future__ import annotations

from typing import Sequence

import torch


class FixedTimes:
    """Stands in for a model's ``time_dist``: ``sample(n, device)`` returns the first ``n``
    of the given times (float32, on ``device``), in order."""

    def __init__(self, times: torch.Tensor | Sequence[float]):
        self.times = torch.as_tensor(times, dtype=torch.float32)

    def sample(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        return self.times[:n].to(device)
