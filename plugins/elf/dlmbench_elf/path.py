"""The ELF flow path, its time and guidance-scale distributions, and x <-> v conversions.

Convention (paper Sec. 3.1; ``flow_matching``'s CondOT path): t = 0 is noise, t = 1
is data, and with a noise scale ``s_n`` (``denoiser_noise_scale: 2.0`` in every
``src/configs/training_configs/*.yml`` of ``lillian039/ELF@b29d883``)::

    z_t = t * x + (1 - t) * s_n * eps          v = dz_t/dt = x - s_n * eps

An x-prediction ``x_hat`` becomes a velocity as ``(x_hat - z_t) / max(1 - t, t_eps)``
(t_eps = 0.05; paper Eq. 1). Without the clamp this is exactly ``x - s_n eps`` when
``x_hat = x``; the official code (``net_out_to_v_x`` in ``src/utils/sampling_utils.py``)
clamps both the prediction *and* the regression target, and this module does the same,
so the loss is ``||x_hat - x||^2 / max(1-t, .05)^2``.

All three objects are small frozen dataclasses so they compose by constructor, in the
style of ``flow_matching``'s ``path/scheduler/scheduler.py`` (``Scheduler(t) ->
SchedulerOutput``); MDLM's and Duo's schedule (:mod:`dlmbench.schedule`) has the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _bcast(t: Tensor | float, like: Tensor) -> Tensor | float:
    """``(B,)`` times become ``(B, 1, 1)`` so they broadcast over ``(B, L, D)`` latents."""
    if isinstance(t, Tensor) and t.dim() > 0:
        return t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return t


@dataclass(frozen=True)
class PathSample:
    """A point on the path: ``z`` is ``z_t`` and ``v`` the (clamped) velocity target."""

    z: Tensor
    v: Tensor


@dataclass(frozen=True)
class FlowPath:
    """Linear (CondOT) path from ``s_n * eps`` at t=0 to the latent ``x`` at t=1."""

    noise_scale: float = 2.0
    t_eps: float = 0.05

    def interpolate(self, x: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        tb = _bcast(t, x)
        return tb * x + (1 - tb) * self.noise_scale * eps

    def sample(self, x: Tensor, eps: Tensor, t: Tensor | float) -> PathSample:
        """``z_t`` and the regression target ``(x - z_t) / max(1 - t, t_eps)``."""
        z = self.interpolate(x, eps, t)
        return PathSample(z=z, v=self.velocity(x, z, t))

    def denom(self, t: Tensor | float, like: Tensor) -> Tensor | float:
        tb = _bcast(t, like)
        if isinstance(tb, Tensor):
            return (1 - tb).clamp_min(self.t_eps)
        return max(1.0 - float(tb), self.t_eps)

    def velocity(self, x_hat: Tensor, z: Tensor, t: Tensor | float) -> Tensor:
        """x-prediction -> velocity: ``(x_hat - z) / max(1 - t, t_eps)`` (paper Eq. 1)."""
        return (x_hat - z) / self.denom(t, z)

    def data(self, v_hat: Tensor, z: Tensor, t: Tensor | float) -> Tensor:
        """velocity -> x-prediction, the exact inverse of :meth:`velocity`."""
        return z + self.denom(t, z) * v_hat

    def euler(self, z: Tensor, x_hat: Tensor, t: float, t_next: float) -> Tensor:
        """One Euler step of the ODE ``dz/dt = v`` from ``t`` to ``t_next`` (paper Alg. 5; ``_ode_step``).

        With ``t_next = 1`` and ``1 - t >= t_eps`` this lands exactly on ``x_hat``.
        """
        return z + (t_next - t) * self.velocity(x_hat, z, t)

    def churn(
        self, z: Tensor, t: float, t_next: float, gamma: float, eps: Tensor
    ) -> tuple[Tensor, float]:
        """The SDE "churn" of the official code (``_sde_step`` in ``src/utils/sampling_utils.py``).

        ``alpha = clip(1 - gamma (t_next - t), 0, 1)``, ``t_b = alpha t`` and
        ``z_b = alpha z + (1 - alpha) s_n eps``; the caller then predicts at ``(z_b, t_b)``
        and takes an Euler step from ``t_b`` to ``t_next``. gamma = 0 gives ``z_b = z``,
        ``t_b = t``: the ODE step. (Paper Alg. 6 instead steps the *original* z; the code
        form is the one the released checkpoints were evaluated with.)
        """
        alpha = min(max(1.0 - gamma * (t_next - t), 0.0), 1.0)
        return alpha * z + (1.0 - alpha) * self.noise_scale * eps, alpha * t


def _normal(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normals; with a generator they are drawn in float64 on its device."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    out = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return out.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class LogitNormal:
    """``sigmoid(N(mean, std^2))``: training t (-1.5, 0.8) and decode levels (0.8, 0.8)."""

    mean: float
    std: float

    def sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        work = torch.float64 if generator is not None else dtype
        n = _normal(shape, generator, device, work)
        return torch.sigmoid(n * self.std + self.mean).to(dtype)

    def median(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.mean))


@dataclass(frozen=True)
class LogUniformScale:
    """Self-conditioning CFG scale w with ``(1 + w) ~ LogUniform[1 + lo, 1 + hi]`` (paper Alg. 3).

    The reference range is lo = 0.5, hi = 5, so w in [0.5, 5], biased towards small w
    (the paper's "power distribution"); code ``sample_cfg_scale``.
    """

    lo: float = 0.5
    hi: float = 5.0

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        if generator is None:
            u = torch.rand(n, device=device, dtype=dtype)
        else:
            u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
            u = u.to(device=device, dtype=dtype)
        a, b = 1.0 + self.lo, 1.0 + self.hi
        return a * torch.exp(u * math.log(b / a)) - 1.0


def sc_cfg_target(v: Tensor, v_cond: Tensor, v_uncond: Tensor, w: Tensor) -> Tensor:
    """Training-time CFG on the self-conditioning signal (paper Alg. 3, Eq. 3).

    ``v + (1 - 1/w) (v_c - v_u)`` for the rows that self-condition (the caller applies it
    to those rows only, i.e. the ``m`` of the paper). Regressing ``f(z | x', w)`` on it,
    with ``v_c = f(z | x', w)`` and ``v_u = f(z | 0, w)`` held fixed, has the fixed point
    ``f(z | x', w) = w E[v | z, x'] + (1 - w) E[v | z]``: CFG on x' at the cost of one pass.
    """
    return v + (1.0 - 1.0 / w).view(-1, *([1] * (v.dim() - 1))) * (v_cond - v_uncond)
