"""MDLM: masked (absorbing-state) diffusion with the SUBS parameterisation.

The forward process, SUBS, the NELBO (Eq. 10-11) and the time conditioning of the MDLM
paper (Sahoo et al., NeurIPS 2024, arXiv 2406.07524) on the shared DiT
(:mod:`dlmbench.nn.dit`).
Where code and paper differ this follows ``kuleshov-group/mdlm@c112c52`` (``diffusion.py``,
``noise_schedule.py``), which produced the released weights:

* **Schedule**: log-linear, ``alpha_t = 1 - (1 - eps) t`` with ``eps = 1e-3``
  (:class:`dlmbench.schedule.LogLinearSchedule`); each position is masked independently
  with probability ``1 - alpha_t`` (``q_xt``).
* **SUBS** (``_subs_parameterization``): ``-1e6`` is added to the ``[MASK]`` logit before
  log-normalising (the model never predicts the mask), and unmasked positions carry their
  token over (log-prob 0 on ``z_t``, ``-1e6`` elsewhere), so they contribute no loss and
  are never changed.
* **Continuous-time NELBO** (T = 0): ``-alpha'_t / (1 - alpha_t) * log p_theta(x | z_t)``
  on masked positions; for this schedule the weight is exactly ``1/t`` (the code writes it
  ``dsigma / expm1(sigma)``). ``t`` is drawn with the code's antithetic stratification
  (:class:`dlmbench.schedule.StratifiedUniform`, one ``t`` per sequence). The training
  loss sums over masked positions and divides by the number of *all* loss positions in
  the batch (the code averages over every token, BOS/EOS included); :meth:`MDLM.nelbo`
  returns the per-sequence sum (nats).
* **Discrete-time bound** (``T > 0``, the code's D3PM-style ``_d3pm_loss``): ``t`` is
  snapped to ``{1/T, ..., 1}`` and the weight is ``T (alpha_s - alpha_t) / (1 - alpha_t)``
  with ``s = t - 1/T``; under SUBS the mask-probability terms of the code vanish and this
  is again ``1/t`` for the log-linear schedule. Like the code, no prior or reconstruction
  term is added (both vanish under SUBS, up to the ``eps`` of ``alpha_1``).
* **Time conditioning**: off by default, as in the released OWT model
  (``time_conditioning: False`` in ``configs/config.yaml``); sigma is then zeroed before
  ``sigma_map``. This is what makes the cached sampler exact.

Conditional tasks (``spec.prefix_len > 0``): the prefix is never masked and the loss and
the bound cover target positions only (intersected with ``batch.loss_mask`` if given;
:func:`dlmbench.prefix.target_positions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from dlmbench.data import Batch, DataSpec
from dlmbench.errors import ConfigError
from dlmbench.model import Model
from dlmbench.nn.dit_config import DiTModelConfig
from dlmbench.prefix import target_positions
from dlmbench.released import ReleasedWeights
from dlmbench.schedule import LogLinearSchedule, StratifiedUniform

#: The code's ``neg_infinity`` (``diffusion.py``), used by SUBS.
NEG_INFINITY = -1_000_000.0


class MDLMConfig(DiTModelConfig):
    """MDLM options; defaults are the released OWT recipe (``small``); the architecture
    and optimiser fields are the shared DiT ones (:mod:`dlmbench.nn.dit_config`)."""

    # diffusion
    noise_eps: float = Field(1e-3, ge=0.0, lt=1.0)  # log-linear schedule: alpha_1 = noise_eps
    sampling_eps: float = Field(1e-3, gt=0.0, lt=1.0)  # t ~ U[sampling_eps, 1]
    antithetic_sampling: bool = True
    time_conditioning: bool = False
    T: int = Field(0, ge=0)  # 0: continuous-time NELBO; > 0: the discrete-time bound


# -- NELBO weights and parameterisation (module-level so tests can check them) ---------------
def continuous_weight(schedule: LogLinearSchedule, t: torch.Tensor) -> torch.Tensor:
    """``-alpha'_t / (1 - alpha_t)`` (paper Eq. 10): exactly ``1/t`` for the log-linear schedule."""
    at = schedule(t)
    return -at.d_alpha_t / (1 - at.alpha_t)


def discrete_weight(schedule: LogLinearSchedule, t: torch.Tensor, T: int) -> torch.Tensor:
    """``T (alpha_s - alpha_t) / (1 - alpha_t)`` with ``s = t - 1/T`` (also ``1/t`` here)."""
    a_t, a_s = schedule(t).alpha_t, schedule(t - 1.0 / T).alpha_t
    return T * (a_s - a_t) / (1 - a_t)


def mask_bias(vocab_size: int, mask_id: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    bias = torch.zeros(vocab_size, device=device, dtype=dtype)
    bias[mask_id] = NEG_INFINITY
    return bias


def subs_log_probs(logits: torch.Tensor, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The SUBS parameterisation (``_subs_parameterization``) of raw ``(B, L, K)`` logits.

    Adds ``-1e6`` to the mask logit, log-normalises, then overwrites every unmasked
    position with a one-hot log-distribution on its current token (0 / ``-1e6``).
    """
    logits = logits + mask_bias(logits.shape[-1], mask_id, logits.device, logits.dtype)
    log_p = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    carry = torch.full_like(log_p, NEG_INFINITY).scatter_(-1, xt.unsqueeze(-1), 0.0)
    return torch.where((xt != mask_id).unsqueeze(-1), carry, log_p)


class MDLM(Model):
    """Masked diffusion LM (Sahoo et al., NeurIPS 2024); ``network`` is the DiT."""

    name = "mdlm"
    Config = MDLMConfig
    default_sampler = "ddpm_cache"
    released_weights: ClassVar[dict[str, ReleasedWeights]] = {
        "mdlm-owt": ReleasedWeights(
            hub="kuleshov-group/mdlm-owt",
            trained_on="524B GPT-2 tokens of OpenWebText (1M steps x 512 x 1024)",
            reference="Sahoo et al. 2024, section 4.1 and Table 3"),
    }

    @classmethod
    def load_weights(cls, source: str, spec: DataSpec, options: dict[str, Any], cache: Path,
                     preset: str | None = None) -> "MDLM":
        from dlmbench_mdlm.official import load_official

        return load_official(source, spec=spec, **options)

    def __init__(self, config: MDLMConfig, spec: DataSpec):
        super().__init__(config, spec)
        if not 0 <= spec.mask_id < spec.vocab_size:
            raise ConfigError(f"mdlm needs spec.mask_id inside the vocabulary, got {spec.mask_id}")
        self.backbone = config.build_dit(spec.vocab_size)
        self.schedule = LogLinearSchedule(config.noise_eps)
        self.time_dist = StratifiedUniform(config.sampling_eps, config.antithetic_sampling)

    @property
    def network(self) -> torch.nn.Module:
        return self.backbone

    # -- conditioning and parameterisation -------------------------------------------------
    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """The ``sigma`` fed to the network: ``sigma(t)``, or zeros without time conditioning."""
        if not self.config.time_conditioning:
            return torch.zeros_like(t, dtype=torch.float32)
        return self.schedule(t).total_noise.float()

    def log_probs(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """SUBS log-probabilities ``log x_theta(z_t, t)``, ``(B, L, K)`` fp32."""
        return subs_log_probs(self.network(xt, self.conditioning(t)), xt, self.spec.mask_id)

    # -- objective ------------------------------------------------------------------------
    def token_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position NELBO terms ``(B, L)`` (zero off the scored positions) and the
        scored-position mask. One time ``t`` per sequence."""
        x0 = batch.tokens
        B, L = x0.shape
        cfg = self.config
        noised, scored = target_positions(self.spec, batch)
        if bool((x0[scored] == self.spec.mask_id).any()):
            raise ValueError("mdlm: the data contains spec.mask_id at a scored position")
        t = self.time_dist.sample(B, x0.device)
        if cfg.T > 0:
            t = ((t * cfg.T).floor().clamp(max=cfg.T - 1) + 1) / cfg.T  # t in {1/T, ..., 1}
            weight = discrete_weight(self.schedule, t, cfg.T)
        else:
            weight = continuous_weight(self.schedule, t)
        move = 1 - self.schedule(t).alpha_t
        masked = (torch.rand(B, L, device=x0.device) < move[:, None]) & noised
        xt = torch.where(masked, torch.full_like(x0, self.spec.mask_id), x0)
        logits = self.network(xt, self.conditioning(t))
        # SUBS: unmasked positions carry over (log-prob 0: no loss), so only masked
        # positions need the normalised log-probability of the clean token.
        logits = logits + mask_bias(logits.shape[-1], self.spec.mask_id, logits.device)
        nll = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view(B, L)
        per_token = nll * weight[:, None] * (masked & scored)
        return per_token, scored

    def loss(self, batch: Batch) -> torch.Tensor:
        per_token, scored = self.token_losses(batch)
        return per_token.sum() / scored.sum().clamp_min(1)

    def nelbo(self, batch: Batch) -> torch.Tensor:
        per_token, _ = self.token_losses(batch)
        return per_token.sum(-1)

