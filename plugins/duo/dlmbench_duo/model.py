"""Duo: uniform-state diffusion with the Rao-Blackwellised NELBO (Sahoo et al., ICML 2025,
arXiv 2506.10892).

Follows ``s-sahoo/duo@7c9b498`` (``algo.py``: ``DUO_BASE``, ``DUO``; ``trainer_base.py``):

* **Forward process** (paper Sec. 2.1): ``q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) / K)``:
  each token is kept with probability ``alpha_t``, else resampled uniformly over *all* K
  ids (the code's ``q_xt``; the prior is uniform over K). Log-linear
  ``alpha_t = 1 - (1 - 1e-3) t`` (:class:`dlmbench.schedule.LogLinearSchedule`), ``t`` drawn
  with the code's antithetic stratification (:class:`dlmbench.schedule.StratifiedUniform`).
* **Parameterisation**: plain softmax over K (the "mean" parameterisation, no SUBS).
* **Time conditioning**: on, ``sigma = -log alpha_t`` (``_sigma_from_alphat``).
* **NELBO** (:func:`rb_nelbo_per_token`, paper Eq. 17 / ``DUO_BASE.nll_per_token``): with
  ``xbar = K alpha_t x + (1 - alpha_t)``, ``xbar_theta`` likewise with ``x_theta``, ``i``
  the index of ``z_t``, ``m`` that of ``x`` and ``kappa = (1 - alpha_t) / (K alpha_t + 1 -
  alpha_t)``, the per-token loss is ``alpha'_t / (K alpha_t) [T1 - T2]`` with
  ``T1 = K / xbar_i - K / xbar_theta_i`` and
  ``T2 = (kappa [z=x] + [z!=x]) sum_j log(xbar_theta_i / xbar_theta_j)
  + K alpha_t / (1 - alpha_t) [z!=x] log(xbar_theta_i / xbar_theta_m)
  + ((K - 1) kappa [z=x] - [z!=x] / kappa) log kappa``.
  It is the continuous-time USDM bound with the sum over the one-hot ``xbar`` done in
  closed form. Loss = sum over scored positions / their number (as the code's token
  average); :meth:`Duo.nelbo` = per-sequence sum, one ``t`` per sequence. No prior term
  (``alpha_1 = 1e-3``), as in the code.
* **Curriculum** (paper Sec. 3 and 5.1; the code's "simple" mode, ``DUO.nll``), for the first
  ``curriculum_steps`` (or ``curriculum_fraction`` of the ``fit`` steps) training steps:
  ``gamma_t = gamma_min + t (gamma_max - gamma_min)`` with the code's window
  ``[-3.55, -1.85]`` (the paper's stated ``[beta, gamma] = [0.03, 0.15]`` maps elsewhere;
  we follow the code), ``w = alpha_tilde e_x + sigma_tilde eps``, the network reads the
  soft input ``softmax(w / tau)`` (``tau = 1e-3``), and the loss is the RB NELBO with
  ``z_t = argmax w``, ``alpha_t = T(alpha_tilde)`` from :mod:`dlmbench_duo.duality` and
  ``dalpha_t`` by finite difference. After the curriculum (and always in
  :meth:`Duo.nelbo` and in eval mode) the exact discrete loss is used (``algo=duo_base``).

Conditional tasks: the prefix is kept clean (also in the soft input) and excluded from
the loss; only target positions are noised and scored
(:func:`dlmbench.prefix.target_positions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from dlmbench.data import Batch, DataSpec
from dlmbench.errors import ConfigError
from dlmbench.model import Model
from dlmbench.nn.dit_config import DiTModelConfig
from dlmbench.prefix import target_positions
from dlmbench.released import ReleasedWeights
from dlmbench.schedule import LogLinearSchedule, StratifiedUniform

from dlmbench_duo.duality import alpha_tilde, duality_table


class DuoConfig(DiTModelConfig):
    """Duo options; defaults are the released OWT recipe (``small``); the architecture
    and optimiser fields are the shared DiT ones (:mod:`dlmbench.nn.dit_config`). The
    reference curriculum runs for half of training (500K of 1M steps):
    ``curriculum_fraction=0.5``.
    """

    # diffusion
    noise_eps: float = Field(1e-3, ge=0.0, lt=1.0)
    sampling_eps: float = Field(1e-3, gt=0.0, lt=1.0)
    antithetic_sampling: bool = True
    time_conditioning: bool = True
    # Gaussian-guided curriculum
    curriculum_steps: int = Field(0, ge=0, description="training steps with the curriculum loss")
    curriculum_fraction: float = Field(0.0, ge=0.0, le=1.0, description="same, as a fraction of fit's steps")
    curriculum_tau: float = Field(1e-3, gt=0.0)
    gamma_min: float = -3.55
    gamma_max: float = -1.85

    @model_validator(mode="after")
    def _check(self) -> "DuoConfig":
        if self.curriculum_steps and self.curriculum_fraction:
            raise ValueError("set curriculum_steps or curriculum_fraction, not both")
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"gamma_min={self.gamma_min} must be below gamma_max={self.gamma_max}")
        return self


def rb_nelbo_per_token(log_x_theta: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                       alpha_t: torch.Tensor, dalpha_t: torch.Tensor) -> torch.Tensor:
    """Duo's Rao-Blackwellised per-token NELBO integrand (``DUO_BASE.nll_per_token``).

    ``log_x_theta`` ``(B, L, K)``; ``xt``, ``x0`` ``(B, L)``; ``alpha_t``, ``dalpha_t``
    broadcastable to ``(B, L)``. Returns ``(B, L)`` in the dtype of ``log_x_theta``.
    """
    K = log_x_theta.shape[-1]
    dtype = log_x_theta.dtype
    a = alpha_t.to(dtype).expand(xt.shape)
    da = dalpha_t.to(dtype).expand(xt.shape)
    xbar_theta = K * a[..., None] * log_x_theta.exp() + (1 - a[..., None])
    eq = (x0 == xt).to(dtype)
    neq = 1 - eq
    xbar_xt = (1 - a) + K * a * eq
    log_xbar_theta = xbar_theta.log()
    xbar_theta_xt = xbar_theta.gather(-1, xt[..., None]).squeeze(-1)
    log_xbar_theta_xt = log_xbar_theta.gather(-1, xt[..., None]).squeeze(-1)
    log_xbar_theta_x = log_xbar_theta.gather(-1, x0[..., None]).squeeze(-1)
    term1 = K * (1 / xbar_xt - 1 / xbar_theta_xt)
    kappa = (1 - a) / (K * a + 1 - a)
    coef = eq * kappa + neq
    offset = ((K - 1) * kappa * eq - neq / kappa) * kappa.log()
    term2 = (
        coef * (K * log_xbar_theta_xt - log_xbar_theta.sum(-1))
        + K * a / (1 - a) * neq * (log_xbar_theta_xt - log_xbar_theta_x)
        + offset
    )
    return da / (K * a) * (term1 - term2)


def uniform_posterior(x: torch.Tensor, xt: torch.Tensor, alpha_t: float | torch.Tensor,
                      alpha_s: float | torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``q(z_s | z_t, x)`` of the uniform-state process (paper Eq. 4, ``_posterior_from_x0``).

    ``x`` is ``(..., K)`` (one-hot or the model's probabilities ``x_theta``), ``xt`` its
    ``(...)`` ids; ``alpha_*`` scalars or ``(..., 1)``. Computed in ``x``'s dtype (float64
    when sampling). With ``alpha_s = 1`` it is the Bayes posterior of ``x`` given ``z_t``.
    ``inplace`` overwrites ``x`` with the result (the same ops on the same values): a
    sampler's own ``x_theta`` then costs no ``(..., K)`` temporaries per step.
    """
    K = x.shape[-1]
    alpha_ts = alpha_t / alpha_s
    x_at_zt = x.gather(-1, xt[..., None])
    base = (1 - alpha_ts) * (1 - alpha_s) / K
    at_zt = K * alpha_t * x_at_zt + (alpha_ts - alpha_t)
    den = K * alpha_t * x_at_zt + 1 - alpha_t
    if inplace:
        return x.mul_(alpha_s - alpha_t).add_(base).scatter_add_(-1, xt[..., None], at_zt).div_(den)
    num = (alpha_s - alpha_t) * x + base
    num = num.scatter_add(-1, xt[..., None], at_zt)
    return num / den


class Duo(Model):
    """Duo (Sahoo et al., ICML 2025): uniform-state diffusion LM on the shared DiT."""

    name = "duo"
    Config = DuoConfig
    default_sampler = "ancestral"
    released_weights: ClassVar[dict[str, ReleasedWeights]] = {
        "duo-owt": ReleasedWeights(
            hub="s-sahoo/duo",
            trained_on="524B GPT-2 tokens of OpenWebText (1M steps x 512 x 1024, curriculum for the first 500K)",
            reference="Sahoo et al. 2025, section 5.1"),
        "duo-distilled": ReleasedWeights(
            hub="s-sahoo/duo-distilled",
            trained_on="524B GPT-2 tokens of OpenWebText, then 5 rounds of discrete consistency distillation "
                       "(50K steps x 128 x 1024, about 6.7B tokens)",
            distilled=True, reference="Sahoo et al. 2025, section 5.2 and Algorithm 1"),
    }

    @classmethod
    def load_weights(cls, source: str, spec: DataSpec, options: dict[str, Any], cache: Path,
                     preset: str | None = None) -> "Duo":
        from dlmbench_duo.official import load_official

        return load_official(source, spec=spec, **options)

    def __init__(self, config: DuoConfig, spec: DataSpec):
        super().__init__(config, spec)
        if spec.vocab_size < 2:
            raise ConfigError("duo needs a vocabulary of at least 2 tokens")
        self.backbone = config.build_dit(spec.vocab_size)
        self.schedule = LogLinearSchedule(config.noise_eps)
        self.time_dist = StratifiedUniform(config.sampling_eps, config.antithetic_sampling)
        # optimiser steps taken with this model (drives the curriculum; saved with it)
        self.register_buffer("steps_trained", torch.zeros((), dtype=torch.long))
        self._fit_steps: int | None = None

    @property
    def network(self) -> torch.nn.Module:
        return self.backbone

    # -- conditioning -----------------------------------------------------------------
    def conditioning_from_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        if not self.config.time_conditioning:
            return torch.zeros_like(alpha, dtype=torch.float32)
        return (-torch.log(alpha)).float()

    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """The network's ``sigma = -log alpha_t`` (zeros without time conditioning)."""
        return self.conditioning_from_alpha(self.schedule(t).alpha_t)

    def log_probs(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log x_theta(z_t, t)``, ``(B, L, K)`` fp32."""
        return torch.log_softmax(self.network(xt, self.conditioning(t)), dim=-1)

    # -- curriculum -------------------------------------------------------------------
    def on_fit_start(self, total_steps: int) -> None:
        """Called by :func:`dlmbench.training.fit`: resolves ``curriculum_fraction``."""
        self._fit_steps = int(total_steps)

    def curriculum_length(self) -> int:
        cfg = self.config
        if cfg.curriculum_steps:
            return cfg.curriculum_steps
        if cfg.curriculum_fraction:
            if self._fit_steps is None:
                raise ConfigError(
                    "duo: curriculum_fraction needs the number of training steps; train with "
                    "dlmbench.training.fit (or call model.on_fit_start(steps)), or set curriculum_steps"
                )
            return round(cfg.curriculum_fraction * self._fit_steps)
        return 0

    def in_curriculum(self) -> bool:
        if not (self.training and torch.is_grad_enabled()):
            return False
        return int(self.steps_trained) < self.curriculum_length()

    # -- objective --------------------------------------------------------------------
    def _exact_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = batch.tokens
        B, L = x0.shape
        K = self.spec.vocab_size
        noised, scored = target_positions(self.spec, batch)
        at = self.schedule(self.time_dist.sample(B, x0.device))
        alpha, dalpha = at.alpha_t, at.d_alpha_t
        move = (torch.rand(B, L, device=x0.device) < (1 - alpha)[:, None]) & noised
        xt = torch.where(move, torch.randint(0, K, (B, L), device=x0.device), x0)
        log_x_theta = torch.log_softmax(self.network(xt, self.conditioning_from_alpha(alpha)), dim=-1)
        per_token = rb_nelbo_per_token(log_x_theta, xt, x0, alpha[:, None], dalpha[:, None])
        return torch.where(scored, per_token, 0.0), scored

    def _curriculum_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = batch.tokens
        B, L = x0.shape
        cfg, K = self.config, self.spec.vocab_size
        noised, scored = target_positions(self.spec, batch)
        t = self.time_dist.sample(B, x0.device)
        span = cfg.gamma_max - cfg.gamma_min
        gamma = (cfg.gamma_min + t.double() * span)
        table = duality_table(K, min(-5.0, cfg.gamma_min), max(-1.0, cfg.gamma_max + 0.01))
        alpha64, dalpha64 = table.alpha_and_dalpha_dt(gamma, span)
        a_tilde, s_tilde = (v.float()[:, None, None] for v in alpha_tilde(gamma))
        onehot = F.one_hot(x0, K).float()
        w = a_tilde * onehot + s_tilde * torch.randn(B, L, K, device=x0.device)
        w = torch.where(noised[..., None], w, onehot)  # the prefix stays clean
        xt = w.argmax(-1)
        soft = w / cfg.curriculum_tau  # logits; the embedding takes their softmax
        alpha, dalpha = alpha64.float(), dalpha64.float()
        log_x_theta = torch.log_softmax(self.network(soft, self.conditioning_from_alpha(alpha)), dim=-1)
        per_token = rb_nelbo_per_token(log_x_theta, xt, x0, alpha[:, None], dalpha[:, None])
        return torch.where(scored, per_token, 0.0), scored

    def loss(self, batch: Batch) -> torch.Tensor:
        terms = self._curriculum_terms if self.in_curriculum() else self._exact_terms
        per_token, scored = terms(batch)
        if self.training and torch.is_grad_enabled():
            self.steps_trained += 1
        return per_token.sum() / scored.sum().clamp_min(1)

    def nelbo(self, batch: Batch) -> torch.Tensor:
        per_token, _ = self._exact_terms(batch)
        return per_token.sum(-1)
