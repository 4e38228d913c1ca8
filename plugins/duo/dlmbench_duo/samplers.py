"""Duo samplers: ``ancestral`` and ``greedy_tail`` (``s-sahoo/duo@7c9b498 trainer_base.py``,
``generate_samples``).

Both start from the uniform prior over all K ids, with the request's prefix written over
the first positions (:func:`dlmbench.prefix.initial_ids`), and walk the grid
``t_i = linspace(1, final_t, steps + 1)`` (``final_t = 1e-5``); each step draws every
target position from the exact posterior ``q(z_s | z_t, x = x_theta(z_t, t))`` (paper
Eq. 4) in float64 (``_ancestral_update`` with ``algo.py``'s ``_posterior_from_x0``). Then
one more network call at ``t = final_t`` (``sampling.noise_removal``):

* ``ancestral``: one more posterior draw with ``alpha_s = 1`` (the Bayes posterior of
  ``x`` given ``z_t`` under ``x_theta``; the code's ``noise_removal=ancestral``);
* ``greedy_tail``: the argmax of ``x_theta`` (Greedy-Tail, ``noise_removal=greedy``).

So the NFE is ``steps + 1`` for both. There is no caching: Duo is time-conditioned and
every position may change at every step. Draws use
:func:`dlmbench.categorical.sample_categorical` (float64) with ``request.generator``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from dlmbench.categorical import sample_categorical
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.model import Model
from dlmbench.prefix import initial_ids
from dlmbench.sampler import Sampler, SamplerConfig, model_device

from dlmbench_duo.model import uniform_posterior


class DuoSamplerConfig(SamplerConfig):
    final_t: float = Field(1e-5, gt=0.0, lt=1.0, description="last time of the grid (the code's eps)")


class _DuoSampler(Sampler):
    model = "duo"
    Config = DuoSamplerConfig
    greedy_tail: ClassVar[bool] = False

    def max_nfe(self, steps: int, spec: DataSpec | None = None) -> int:
        return steps + 1

    def _x_theta(self, model: Model, x: torch.Tensor, t: float, P: int) -> torch.Tensor:
        """Float64 probabilities ``x_theta(z_t, t)`` at the target positions, ``(n, L - P, K)``
        (the prefix's outputs are never read; softmax is row-wise, so the rows kept are
        unchanged)."""
        tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        logits = model.network(x, model.conditioning(tt))
        return torch.softmax(logits[:, P:].double(), dim=-1)

    @torch.no_grad()
    def sample(self, model: Model, request: SampleRequest) -> torch.Tensor:
        spec, gen = model.spec, request.generator
        n, L, P, K = request.num_samples, spec.seq_len, spec.prefix_len, spec.vocab_size
        device = model_device(model)
        x = initial_ids(spec, request, torch.randint(0, K, (n, L), generator=gen, device=device), device)
        grid = torch.linspace(1.0, self.config.final_t, request.steps + 1, dtype=torch.float64)
        times, alphas = grid.tolist(), model.schedule(grid).alpha_t.tolist()  # float64
        for i in range(request.steps):
            probs = self._x_theta(model, x, times[i], P)
            q = uniform_posterior(probs, x[:, P:], alphas[i], alphas[i + 1], inplace=True)
            x[:, P:] = sample_categorical(q, gen)
        probs = self._x_theta(model, x, times[-1], P)
        if self.greedy_tail:
            x[:, P:] = probs.argmax(dim=-1)
        else:
            q = uniform_posterior(probs, x[:, P:], alphas[-1], 1.0, inplace=True)
            x[:, P:] = sample_categorical(q, gen)
        return x


class DuoAncestral(_DuoSampler):
    """Ancestral sampling with the exact posterior; final step a posterior draw at alpha_s = 1."""

    name = "ancestral"


class DuoGreedyTail(_DuoSampler):
    """Ancestral sampling with a greedy (argmax) last step: Duo's Greedy-Tail."""

    name = "greedy_tail"
    greedy_tail = True
