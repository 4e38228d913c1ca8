"""Categorical sampling in float64, the one place every sampler draws tokens.

Zheng et al. (arXiv 2409.02908, ICLR 2025) showed that Gumbel-max with
float32 uniforms truncates the smallest exponential draws, lowers the effective
temperature and fakes low generative perplexity at many steps. Every draw in dlmbench
therefore happens here, in float64, from a caller-supplied generator.
"""

from __future__ import annotations

import torch


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one index per row of unnormalised ``probs`` (``(..., K)``, >= 0).

    Uses the exponential race ``argmax(p / E)``, ``E ~ Exp(1)``, which is exact for
    unnormalised weights, computed entirely in float64.
    """
    p = probs.to(torch.float64)
    e = torch.rand(p.shape, dtype=torch.float64, device=p.device, generator=generator)
    # Exp(1) draws -log1p(-u); the clamp only guards u == 0 (probability 2**-53) against
    # 0/0. In place: the same ops on the same values, without a fresh (..., K) float64
    # tensor per op (a sampler draws over every position each step).
    e.neg_().log1p_().neg_().clamp_min_(1e-300)
    return torch.argmax(torch.div(p, e, out=e), dim=-1)


def sample_from_logits(
    logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0
) -> torch.Tensor:
    """Draw from ``softmax(logits / temperature)`` in float64."""
    z = logits.to(torch.float64) / temperature
    return sample_categorical(torch.softmax(z, dim=-1), generator)
