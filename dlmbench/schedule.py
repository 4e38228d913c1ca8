"""The log-linear noise schedule of masked (MDLM) and uniform-state (Duo) diffusion, and
the distribution both draw their training times from.

``alpha_t``, the probability that a token is still clean at time ``t`` in [0, 1], falls
linearly from 1 to ``eps``::

    alpha_t = 1 - (1 - eps) t        alpha'_t = -(1 - eps)        sigma(t) = -log alpha_t

``sigma`` is the "total noise" a DiT is conditioned on; ``eps`` (1e-3) keeps ``alpha_1``
above zero, so ``sigma`` stays finite. These are ``kuleshov-group/mdlm@c112c52
noise_schedule.py`` (``LogLinearNoise``, whose total noise is written
``-log1p(-(1 - eps) t)``, as here) and ``s-sahoo/duo@7c9b498 trainer_base.py``
(``LogLinear``).

Both objects are frozen dataclasses in the shape of ``flow_matching``'s
``path/scheduler/scheduler.py`` (``Scheduler(t) -> SchedulerOutput``), as ELF's flow path
is (``dlmbench_elf.path``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ScheduleOutput:
    """The schedule at times ``t``; every field has the shape and dtype of ``t``."""

    alpha_t: Tensor  # probability that a token is still clean
    d_alpha_t: Tensor  # d alpha_t / dt
    total_noise: Tensor  # sigma(t) = -log alpha_t, the DiT's conditioning input


@dataclass(frozen=True)
class LogLinearSchedule:
    """``alpha_t = 1 - (1 - eps) t``: masked (MDLM) or resampled (Duo) with probability ``(1 - eps) t``."""

    eps: float = 1e-3

    def __call__(self, t: Tensor) -> ScheduleOutput:
        return ScheduleOutput(
            alpha_t=1 - (1 - self.eps) * t,
            d_alpha_t=torch.full_like(t, -(1 - self.eps)),
            total_noise=-torch.log1p(-(1 - self.eps) * t),
        )


@dataclass(frozen=True)
class StratifiedUniform:
    """Training times ``t ~ U[eps, 1]``, one per sequence.

    With ``antithetic`` (the references' default) the batch is stratified: row ``i`` of
    ``n`` draws ``u_i`` and takes ``t_i = eps + (1 - eps) ((u_i + i) / n mod 1)``, one time
    in each of ``n`` equal strata, which lowers the variance of the batch's loss (the
    ``_sample_t`` of ``kuleshov-group/mdlm@c112c52 diffusion.py`` and ``s-sahoo/duo@7c9b498
    trainer_base.py``; Duo stratifies over the global batch, this over the batch it is given).
    """

    eps: float = 1e-3
    antithetic: bool = True

    def sample(self, n: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, device=device, generator=generator)
        if self.antithetic:
            u = (u / n + torch.arange(n, device=device) / n) % 1
        return (1 - self.eps) * u + self.eps
