"""The Gaussian-to-discrete duality transform ``alpha = T(alpha_tilde)`` (Duo paper, Sec. 3).

For a Gaussian latent ``w = alpha_tilde e_x + sqrt(1 - alpha_tilde^2) eps`` over ``K``
classes, ``argmax(w)`` is exactly uniform-state distributed with

    T(alpha_tilde) = K / (K - 1) * [ integral phi(z - mu) Phi(z)^(K-1) dz - 1/K ],
    mu = alpha_tilde / sqrt(1 - alpha_tilde^2).

The code (``s-sahoo/duo@7c9b498 algo.py``) parameterises by the log-inverse-SNR ``gamma``
with ``alpha_tilde^2 = sigmoid(-gamma)``, hence ``mu = exp(-gamma / 2)``, and pre-tabulates
the integral (``integral/gpt2.pkl``: 100k points of gamma in [-5, -1], computed for
K = 50257). We tabulate it ourselves, for the vocabulary size actually in use, in
float64: the integral is a trapezoid rule on a ``z`` grid of step 0.02 (spectrally
accurate for this smooth, rapidly decaying integrand: it agrees with step 0.001 to
1e-15), ``Phi^(K-1)`` is ``exp((K-1) log_ndtr(z))``, and values between table points
(4001 over [-5, -1]) are linearly interpolated. ``dalpha/dt`` is a forward difference of
step 1e-3 in gamma times ``(gamma_max - gamma_min)``, as in
``DUO._gamma_to_alpha_dalpha_cached``.
"""

from __future__ import annotations

import functools
import math

import torch

#: Finite-difference step in gamma for dalpha/dgamma (the code's 1/T with T = 1000).
GAMMA_FD_STEP = 1e-3


def duality_alpha_exact(gamma: torch.Tensor, vocab_size: int, z_step: float = 0.02, chunk: int = 512) -> torch.Tensor:
    """``T(alpha_tilde(gamma))`` by quadrature, float64, for a 1-D tensor of gammas."""
    K = int(vocab_size)
    gamma = gamma.to(torch.float64).flatten()
    mu = torch.exp(-gamma / 2)
    z = torch.arange(-12.0, float(mu.max()) + 12.0 + z_step, z_step, dtype=torch.float64)
    log_cdf_pow = (K - 1) * torch.special.log_ndtr(z)  # log Phi(z)^(K-1)
    weights = torch.full_like(z, z_step)
    weights[0] = weights[-1] = z_step / 2  # trapezoid
    out = torch.empty_like(mu)
    for lo in range(0, mu.numel(), chunk):
        m = mu[lo : lo + chunk, None]
        log_integrand = -0.5 * (z[None] - m) ** 2 - 0.5 * math.log(2 * math.pi) + log_cdf_pow[None]
        out[lo : lo + chunk] = (log_integrand.exp() * weights[None]).sum(-1)
    return (K / (K - 1)) * (out - 1.0 / K)


class DualityTable:
    """``alpha(gamma)`` on a uniform float64 grid, with linear interpolation."""

    def __init__(self, vocab_size: int, gamma_lo: float = -5.0, gamma_hi: float = -1.0, points: int = 4001):
        self.vocab_size = vocab_size
        self.gamma_lo, self.gamma_hi = float(gamma_lo), float(gamma_hi)
        self.gammas = torch.linspace(self.gamma_lo, self.gamma_hi, points, dtype=torch.float64)
        self.alphas = duality_alpha_exact(self.gammas, vocab_size)
        self.step = (self.gamma_hi - self.gamma_lo) / (points - 1)
        self._on: dict[torch.device, torch.Tensor] = {}

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.alphas.to(device)
        return self._on[device]

    def alpha(self, gamma: torch.Tensor) -> torch.Tensor:
        """``alpha_t`` for ``gamma`` (any shape), float64."""
        g = gamma.to(torch.float64)
        if bool(((g < self.gamma_lo - 1e-9) | (g > self.gamma_hi + 1e-9)).any()):
            raise ValueError(f"gamma outside the tabulated range [{self.gamma_lo}, {self.gamma_hi}]")
        table = self._table(g.device)
        pos = ((g - self.gamma_lo) / self.step).clamp(0, table.numel() - 1)
        i0 = pos.floor().long().clamp(max=table.numel() - 2)
        frac = pos - i0
        return table[i0] * (1 - frac) + table[i0 + 1] * frac

    def alpha_and_dalpha_dt(self, gamma: torch.Tensor, gamma_span: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t`` and ``dalpha_t/dt`` for ``gamma_t = gamma_min + t * gamma_span``."""
        a = self.alpha(gamma)
        da = (self.alpha(gamma + GAMMA_FD_STEP) - a) / GAMMA_FD_STEP * gamma_span
        return a, da


@functools.lru_cache(maxsize=8)
def duality_table(vocab_size: int, gamma_lo: float = -5.0, gamma_hi: float = -1.0) -> DualityTable:
    """The table for ``vocab_size`` covering ``[gamma_lo, gamma_hi]`` (computed once)."""
    return DualityTable(vocab_size, gamma_lo, gamma_hi)


def alpha_tilde(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian signal and noise scales ``(sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma)))``."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
