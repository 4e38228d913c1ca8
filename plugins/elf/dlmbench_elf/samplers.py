"""ELF samplers: Euler ODE and the code-form SDE churn sampler, then one decode pass.

Paper App. B.2, Alg. 5-6; code ``lillian039/ELF@b29d883 src/utils/sampling_utils.py``
(``get_sampling_steps``, ``_ode_step``, ``_sde_step``) and ``src/generation.py``.

Steps and NFE. ``steps = N`` means N network evaluations before the decode pass: the time
grid has N + 1 points ``0 = t_0 < ... < t_N = 1``; steps 1..N-1 use the ODE (or SDE)
update and the last step, to t = 1, is always Euler, landing exactly on x_hat
(when 1 - t_{N-1} >= t_eps = 0.05, as the code's clamp requires; a uniform grid with
N > 20 steps has its last step clamped, as in the code). Then one decode pass (t = 1,
decode mode, zero self-conditioning channel, same w) and argmax. So NFE = N + 1, or
2N + 1 with input CFG on a conditional task, where the conditional and unconditional
passes are batched into one forward of 2B rows (the core counts rows, so both count).

Time grid. ``logit-normal`` (default): N - 1 sorted draws of the training distribution
logit-normal(t_mean, t_std) with 0 and 1 appended, drawn afresh per call from
``request.generator`` (the code's grid is random per batch). ``uniform``: linspace.

Self-conditioning. Each step feeds the previous x_hat (zeros at the first step); the
SC-CFG scale w enters only as tokens, so it costs no extra pass.

Input CFG (conditional tasks, scale s != 1). The unconditional pass zeroes the source
in both z and the self-conditioning channel; x_hat = x_u + s (x_c - x_u). The code mixes
v and x separately; at the target positions both give the same update (z is shared).
The source positions are always restored to the clean source latents, and the returned
ids repeat the request's prefix (:func:`dlmbench.prefix.request_prefix`).

Packed layout (``source_layout: packed``, :mod:`dlmbench_elf.layout`): the source is each
prefix up to its first EOS, embedded with its queries seeing only it; everything after it is
generated, as ``test_generation_cond`` of ``src/generation.py`` does; the ``T`` ids right
after each source are shifted back behind the fixed prefix, so metrics read the fixed
layout. The passes, and so the NFE, are those of the fixed layout.

Randomness: the initial noise, the grid and the SDE noise are all drawn in float64 from
``request.generator``; the latent state is then kept in float32 (the network casts its
inputs to its own dtype, e.g. bf16), and the grid stays float64 Python floats.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from dlmbench.data import DataSpec, SampleRequest
from dlmbench.prefix import request_prefix
from dlmbench.sampler import Sampler, SamplerConfig
from dlmbench_elf.layout import before, first_eos, unpack_target
from dlmbench_elf.model import ELF
from dlmbench_elf.path import LogitNormal, _normal


def time_grid(
    steps: int,
    kind: str,
    generator: torch.Generator | None,
    mean: float = -1.5,
    std: float = 0.8,
) -> Tensor:
    """``(steps + 1,)`` float64 grid from 0 to 1 (see the module docstring)."""
    if steps < 1:
        raise ValueError(f"ELF needs steps >= 1, got {steps}")
    if kind == "uniform":
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "logit-normal":
        inner = LogitNormal(mean, std).sample((steps - 1,), generator, "cpu", torch.float64)
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        return torch.cat([ends[:1], inner.sort().values, ends[1:]])
    raise ValueError(f"unknown ELF time grid {kind!r}")


class ELFSamplerConfig(SamplerConfig):
    w: float = Field(3.0, ge=0, le=100)  # self-conditioning CFG scale (fed as tokens)
    cfg_scale: float = Field(1.0, ge=0, le=100)  # input CFG on conditional tasks; 1 = off
    grid: Literal["logit-normal", "uniform"] = "logit-normal"
    grid_mean: float | None = None  # None: the model's training t_mean
    grid_std: float | None = Field(None, gt=0)  # None: the model's training t_std


#: The churn the reference uses at each step count, for ``gamma: by-steps``: 1.5 at 32 and
#: 1.0 at 64 steps (lillian039/ELF@b29d883 ``src/configs/sampling_configs/
#: uncond_sampling_configs.yml``), 2 at 8 and 16 (paper Fig. 7 and Tab. 6). Between and
#: beyond these the nearest setting at or above the count holds, so 1,024 steps use 1.0.
GAMMA_BY_STEPS: dict[int, float] = {16: 2.0, 32: 1.5, 64: 1.0}


def gamma_for(steps: int) -> float:
    """The reference's SDE gamma for ``steps`` (:data:`GAMMA_BY_STEPS`)."""
    for upto, gamma in sorted(GAMMA_BY_STEPS.items()):
        if steps <= upto:
            return gamma
    return GAMMA_BY_STEPS[max(GAMMA_BY_STEPS)]


class SDEConfig(ELFSamplerConfig):
    """Reference OWT setting (paper Tab. 6; ``uncond_sampling_configs.yml`` of
    ``src/configs/sampling_configs``): SDE, w 3, gamma by step count (:func:`gamma_for`);
    a number fixes gamma at every step count."""

    gamma: float | Literal["by-steps"] = Field("by-steps", union_mode="left_to_right")

    @field_validator("gamma")
    @classmethod
    def _gamma_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0 <= v <= 100:
            raise ValueError(f"gamma = {v}: use a number in [0, 100] or by-steps")
        return v


class ODEConfig(ELFSamplerConfig):
    """Reference conditional setting (De-En, XSum; paper Tab. 1; ``cond_sampling_configs.yml``):
    ODE, w 1, input CFG 2 (64 steps)."""

    w: float = Field(1.0, ge=0, le=100)
    cfg_scale: float = Field(2.0, ge=0, le=100)


class _ELFSampler(Sampler):
    model: ClassVar[str] = "elf"
    config: ELFSamplerConfig

    def gamma(self, steps: int) -> float:
        return 0.0

    def max_nfe(self, steps: int, spec: DataSpec | None = None) -> int:
        """N + 1, or 2N + 1 with input CFG on a conditional task.

        Without ``spec`` the task is unknown and a ``cfg_scale != 1`` gives the bound
        2N + 1 (an unconditional task has no source to drop and uses N + 1).
        """
        cfg = self.config.cfg_scale != 1.0 and (spec is None or spec.prefix_len > 0)
        return (2 if cfg else 1) * steps + 1

    def exact_nfe(self) -> bool:
        # exact whenever max_nfe is given the task's spec (no caching, no early exit)
        return True

    def grid(self, model: ELF, steps: int, generator: torch.Generator) -> Tensor:
        cfg, mcfg = self.config, model.config
        mean = mcfg.t_mean if cfg.grid_mean is None else cfg.grid_mean
        std = mcfg.t_std if cfg.grid_std is None else cfg.grid_std
        return time_grid(steps, cfg.grid, generator, mean, std)

    def _x_hat(
        self, model: ELF, z: Tensor, sc: Tensor, t: float, w: Tensor, src_mask: Tensor, src: Tensor, cfg: bool,
        has_src: bool = True,
    ) -> Tensor:
        """Guided x-prediction with the source restored (one or two passes, batched);
        ``has_src=False`` (no source position) skips the restore, which would copy x_hat."""
        B = z.shape[0]
        if cfg:
            z2 = torch.cat([z, z.masked_fill(src_mask, 0.0)])
            sc2 = torch.cat([sc, sc.masked_fill(src_mask, 0.0)])
            x2 = model.predict(z2, sc2, torch.full((2 * B,), t, device=z.device), torch.cat([w, w])).x
            x_c, x_u = x2[:B], x2[B:].masked_fill(src_mask, 0.0)
            x_hat = x_u + self.config.cfg_scale * (torch.where(src_mask, src, x_c) - x_u)
        else:
            x_hat = model.predict(z, sc, torch.full((B,), t, device=z.device), w).x
        return torch.where(src_mask, src, x_hat) if has_src else x_hat

    @torch.no_grad()
    def sample(self, model: ELF, request: SampleRequest) -> Tensor:
        spec, g = model.spec, request.generator
        B, L, P, N = request.num_samples, spec.seq_len, spec.prefix_len, request.steps
        dev, D = model.device, model.latent_dim
        src_mask = (torch.arange(L, device=dev) < P).view(1, L, 1)
        src = torch.zeros(B, L, D, device=dev)
        prefix = request_prefix(spec, request, dev)
        packed = prefix is not None and model.packed
        if packed:  # per-row source: the prefix before its first EOS, seeing only itself
            c = first_eos(prefix, spec.eos_id)
            src_mask = before(c, L).unsqueeze(-1)  # (B, L, 1)
            src[:, :P] = model.encode(prefix, lengths=(c, c))
            src = src.masked_fill(~src_mask, 0.0)
        elif prefix is not None:
            src[:, :P] = model.encode(prefix, prefix_len=P)  # source attends only to source
        use_cfg = P > 0 and self.config.cfg_scale != 1.0
        w = torch.full((B,), float(self.config.w), device=dev)
        grid = self.grid(model, N, g).tolist()
        gamma, s_n = self.gamma(N), model.path.noise_scale
        # without a source position every torch.where(src_mask, src, .) below is a copy
        has_src = P > 0

        def restore(latents: Tensor) -> Tensor:
            return torch.where(src_mask, src, latents) if has_src else latents

        z = restore(s_n * _normal((B, L, D), g, dev, torch.float32))
        sc = src.clone()  # self-conditioning state: zeros on the target, clean source
        for i in range(N):
            t, t_next = grid[i], grid[i + 1]
            if i < N - 1 and gamma > 0:
                eps = _normal((B, L, D), g, dev, torch.float32)
                z, t = model.path.churn(z, t, t_next, gamma, eps)
                z = restore(z)
            x_hat = self._x_hat(model, z, sc, t, w, src_mask, src, use_cfg, has_src)
            z = restore(model.path.euler(z, x_hat, t, t_next))
            sc = x_hat
        # decode pass: t = 1, decode mode, zero self-conditioning channel, same w
        ones = torch.ones(B, device=dev)
        hidden = model.predict(z, torch.zeros_like(z), ones, w, ones).hidden
        ids = model.decode_logits(hidden).argmax(-1)
        if packed:  # shift back: the ids after each source follow the fixed prefix
            ids = torch.cat([prefix, unpack_target(ids, c, P)], dim=1)
        elif prefix is not None:
            ids[:, :P] = prefix
        return ids.long()


class SDESampler(_ELFSampler):
    """Code-form SDE churn: z_b = a z + (1-a) 2 eps', t_b = a t, a = clip(1 - gamma dt, 0, 1)."""

    name: ClassVar[str] = "sde"
    Config: ClassVar[type[SamplerConfig]] = SDEConfig
    config: SDEConfig

    def gamma(self, steps: int) -> float:
        g = self.config.gamma
        return gamma_for(steps) if g == "by-steps" else float(g)


class ODESampler(_ELFSampler):
    """Euler on the velocity from x-prediction."""

    name: ClassVar[str] = "ode"
    Config: ClassVar[type[SamplerConfig]] = ODEConfig
    config: ODEConfig
