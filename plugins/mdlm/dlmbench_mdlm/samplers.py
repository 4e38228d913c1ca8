"""MDLM samplers: ``ddpm`` and ``ddpm_cache`` (``kuleshov-group/mdlm@c112c52 diffusion.py``).

Both walk the code's grid ``t_i = linspace(1, final_t, steps + 1)`` (``final_t = 1e-5``)
from the all-mask prior. One ancestral step from ``t`` to ``s < t`` draws, at every still
masked position, from the unnormalised weights ``x_theta(x) (alpha_s - alpha_t)`` for
clean tokens and ``1 - alpha_s`` for staying masked; unmasked positions are copied
(``_ddpm_update``). Afterwards one "noise removal" evaluation at ``t = final_t`` fills any
remaining mask with the argmax of ``x_theta`` (``sampling.noise_removal``): one extra NFE,
so ``max_nfe(steps) = steps + 1``.

``ddpm_cache`` (the code's default, ``_ddpm_caching_update``) reuses the last network
output while the input is unchanged: with time conditioning off the denoiser is
time-agnostic, so the same input gives the same output; fresh noise is still drawn at
every step. The code checks "unchanged" for the whole batch at once; we check each
sequence (``cache_scope="sequence"``, the default), which gives the same samples and
counts each sequence's own evaluations, so the NFE per sample does not depend on the
batch size (``cache_scope="batch"`` restores the code's rule). The cache also serves the
final noise-removal call when nothing changed since the last evaluation. With a
time-conditioned model the cache is off, as in the code.

Semi-autoregressive block mode (``num_blocks > 1``; the code's ``sample_subs_guidance``
in fixed-length form): the target is cut into ``num_blocks`` contiguous blocks, generated
left to right, each with its share of the steps and its own noise-removal call, while
later blocks stay masked. The NFE is then ``steps + num_blocks``.

All categorical draws go through :func:`dlmbench.categorical.sample_categorical` in
float64 with ``request.generator``: the code draws in float32, whose truncated Gumbel
noise lowers the effective temperature (Zheng et al., arXiv 2409.02908); the Duo paper
samples every model in float64 (``s-sahoo/duo@7c9b498``, ``sampling.use_float64``).
The start is all-mask with the request's prefix (:func:`dlmbench.prefix.initial_ids`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from dlmbench.categorical import sample_categorical
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.errors import ConfigError
from dlmbench.model import Model
from dlmbench.prefix import initial_ids
from dlmbench.sampler import Sampler, SamplerConfig, model_device

from dlmbench_mdlm.model import mask_bias


def block_bounds(prefix_len: int, seq_len: int, num_blocks: int) -> list[tuple[int, int]]:
    span = seq_len - prefix_len
    if num_blocks > span:
        raise ConfigError(f"num_blocks={num_blocks} exceeds the {span} generated positions")
    edges = [prefix_len + (span * i) // num_blocks for i in range(num_blocks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def split_steps(steps: int, num_blocks: int) -> list[int]:
    if steps < num_blocks:
        raise ConfigError(f"steps={steps} is fewer than num_blocks={num_blocks}; give each block a step")
    return [steps // num_blocks + (1 if i < steps % num_blocks else 0) for i in range(num_blocks)]


class MDLMSamplerConfig(SamplerConfig):
    num_blocks: int = Field(1, ge=1, description="semi-autoregressive blocks (1: whole sequence at once)")
    final_t: float = Field(1e-5, gt=0.0, lt=1.0, description="last time of the grid (the code's eps)")
    noise_removal: bool = Field(True, description="final argmax evaluation at final_t (one NFE per block)")


class MDLMCacheConfig(MDLMSamplerConfig):
    cache_scope: Literal["sequence", "batch"] = "sequence"


class _Denoiser:
    """Calls ``model.network`` and returns float64 log ``x_theta`` (mask suppressed).

    With ``cache`` on, rows whose input is unchanged since their last evaluation are
    served from the cache (valid only for a time-agnostic network)."""

    def __init__(self, model: Model, cache: bool, scope: str = "sequence"):
        self.model = model
        self.cache = cache and not model.config.time_conditioning
        self.scope = scope
        self.last_x: torch.Tensor | None = None
        self.last_out: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None  # the SUBS mask bias, built on the first call

    def _evaluate(self, x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        # a copy even from float64: the bias is added in place, never into the network's tensor
        logits = self.model.network(x, self.model.conditioning(tt)).to(torch.float64, copy=True)
        if self.bias is None:
            self.bias = mask_bias(logits.shape[-1], self.model.spec.mask_id, x.device, torch.float64)
        return torch.log_softmax(logits.add_(self.bias), dim=-1)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        if not self.cache:
            return self._evaluate(x, t)
        if self.last_x is None:
            self.last_x, self.last_out = x.clone(), self._evaluate(x, t)
            return self.last_out
        changed = (x != self.last_x).any(dim=-1)
        if self.scope == "batch" and bool(changed.any()):
            changed = torch.ones_like(changed)
        if bool(changed.all()):  # every row evaluated: no gather or scatter of (B, L, K) rows
            self.last_out = self._evaluate(x, t)
            self.last_x.copy_(x)
        elif bool(changed.any()):
            self.last_out[changed] = self._evaluate(x[changed], t)
            self.last_x[changed] = x[changed]
        return self.last_out


class _MDLMAncestral(Sampler):
    model = "mdlm"
    Config = MDLMSamplerConfig
    use_cache: ClassVar[bool] = False

    def max_nfe(self, steps: int, spec: DataSpec | None = None) -> int:
        return steps + (self.config.num_blocks if self.config.noise_removal else 0)

    def exact_nfe(self) -> bool:
        return not self.use_cache

    @torch.no_grad()
    def sample(self, model: Model, request: SampleRequest) -> torch.Tensor:
        cfg, spec = self.config, model.spec
        device = model_device(model)
        gen = request.generator
        mask_id = spec.mask_id
        x = initial_ids(spec, request, mask_id, device)
        denoise = _Denoiser(model, self.use_cache, getattr(cfg, "cache_scope", "sequence"))
        blocks = block_bounds(spec.prefix_len, spec.seq_len, cfg.num_blocks)
        for (lo, hi), steps in zip(blocks, split_steps(request.steps, cfg.num_blocks)):
            inside = torch.zeros(spec.seq_len, dtype=torch.bool, device=device)
            inside[lo:hi] = True
            grid = torch.linspace(1.0, cfg.final_t, steps + 1, dtype=torch.float64)
            # the schedule of the whole grid at once (elementwise, so each alpha is the one
            # a per-step call gives)
            times, alphas = grid.tolist(), model.schedule(grid).alpha_t.tolist()
            for i in range(steps):
                log_x0 = denoise(x, times[i])
                a_t, a_s = alphas[i], alphas[i + 1]
                todo = (x == mask_id) & inside
                if bool(todo.any()):
                    # unnormalised q(z_s | z_t = m): x_theta (alpha_s - alpha_t), mask 1 - alpha_s
                    weights = log_x0[todo].exp_().mul_(a_s - a_t)
                    weights[:, mask_id] = 1.0 - a_s
                    x[todo] = sample_categorical(weights, gen)
            if cfg.noise_removal:
                log_x0 = denoise(x, cfg.final_t)
                todo = (x == mask_id) & inside
                x[todo] = log_x0[todo].argmax(dim=-1)
        return x


class MDLMDDPM(_MDLMAncestral):
    """Ancestral (D3PM-style) sampler: one network call per step, plus noise removal."""

    name = "ddpm"


class MDLMDDPMCache(_MDLMAncestral):
    """Ancestral sampler that reuses the last output when a step changed nothing."""

    name = "ddpm_cache"
    Config = MDLMCacheConfig
    use_cache = True
