"""Duo samplers against the ideal sampler of the same step count, with a hostile denoiser.

The stand-in network returns the exact ``x_theta`` of Duo's parameterisation for a small
non-product joint (three tokens, three positions, a three-way interaction), computed from
the ``alpha_t`` its time conditioning encodes: the leave-one-out prediction
``p(x^l | z_t^{-l})``, for which ``q(z_s | z_t, x_theta)`` is the true per-position reverse
step (:func:`dlmbench.testing.exact.uniform_denoiser`). Its raw logits carry an
input-dependent additive offset per position (softmax-invariant), and id 0, which the
uniform noise visits but the data never uses, gets a zero probability. The reference is
the distribution the ideal uniform-state sampler with the same grid produces, enumerated
over all ``4 ** 3`` noisy states (:func:`dlmbench.testing.exact.uniform_ideal`): every
position moves in every step, independently given the current state, so few steps are
not exact. Each test also rejects wrong references on the same samples (its power).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import dlmbench_duo.samplers as samplers_module
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.nfe import count_nfe
from dlmbench.testing.draws import float64_draws
from dlmbench.testing.exact import align, assert_fits, uniform_denoiser, uniform_ideal
from dlmbench_duo import Duo, DuoAncestral, DuoConfig, DuoGreedyTail

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4
SPEC = DataSpec(vocab_size=K, seq_len=3, pad_id=0, bos_id=0, eos_id=0, mask_id=0)
STATES = torch.tensor(list(itertools.product([1, 2, 3], repeat=3)))
_G = torch.Generator().manual_seed(0)
#: strongly dependent: sequences whose tokens sum to 0 mod 3 are e^2 times likelier
PROBS = torch.softmax(2.0 * ((STATES - 1).sum(-1) % 3 == 0).double()
                      + 0.5 * torch.randn(len(STATES), generator=_G, dtype=torch.float64), 0)
#: false-alarm rate of each chi-square check under a correct sampler (seeds are fixed)
#: samples per check: above samples_for_power of every case below (at most about 1.6k)
N = 4000
#: below exp(-744) a float64 probability is exactly 0
ZERO_LOGIT = -1000.0
TAILS = {DuoAncestral: "ancestral", DuoGreedyTail: "greedy"}


def offsets(x: torch.Tensor) -> torch.Tensor:
    """Per-row, per-position logit offsets (softmax-invariant), a function of the input,
    up to 100: far beyond the spread of the logits."""
    code = (x.double() * torch.arange(1, x.shape[-1] + 1, dtype=torch.float64)).sum(-1, keepdim=True)
    return 100.0 * torch.sin(0.7 * code + 1.3 * torch.arange(x.shape[-1]))


class HostileDenoiser(nn.Module):
    """Exact ``x_theta`` at ``alpha_t = exp(-sigma)`` behind input-dependent offsets."""

    def forward(self, x, sigma):
        alpha = torch.exp(-sigma.double())
        assert bool((alpha == alpha[0]).all()), "one time per call"
        x_theta = uniform_denoiser(STATES, PROBS, x, float(alpha[0]), K)
        logits = torch.where(x_theta > 0, x_theta.clamp_min(1e-300).log(), ZERO_LOGIT)
        return logits + offsets(x)[..., None]


def stand_in(**options) -> Duo:
    model = Duo(DuoConfig.from_preset("tiny", **options), SPEC)
    model.backbone = HostileDenoiser()
    return model.eval()


def ideal(model: Duo, sampler, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha_t = 1 - (1 - eps) t`` (log-linear) on the sampler's ``linspace(1, final_t)``."""
    grid = torch.linspace(1.0, sampler.config.final_t, steps + 1, dtype=torch.float64)
    alphas = 1 - (1 - model.config.noise_eps) * grid
    return uniform_ideal(STATES, PROBS, alphas, K, tail=TAILS[type(sampler)])


def draw(sampler, model, steps: int, n: int = N, seed: int = 0) -> tuple[torch.Tensor, float]:
    request = SampleRequest(steps=steps, num_samples=n, generator=torch.Generator().manual_seed(seed))
    with count_nfe(model) as counter:
        ids = sampler.sample(model, request)
    return ids, counter.per_sample(n)


#: (steps, the wrong reference, model options, sampler options); the wrong reference is
#: the data (None), the ideal sampler of fewer steps (an int) or that of the default
#: schedule ("default"); the coarse schedule (alpha_1 = 0.3, last time 0.3) makes the prior and the tail matter
CASES = [(1, None, {}, {}), (2, 1, {}, {}), (4, 2, {}, {}), (32, 4, {}, {}),
         (2, "default", {"noise_eps": 0.3}, {"final_t": 0.3})]
CASE_IDS = ["1-step", "2-steps", "4-steps", "32-steps", "coarse-2-steps"]


@pytest.mark.parametrize("sampler_cls", [DuoAncestral, DuoGreedyTail])
@pytest.mark.parametrize("steps,wrong_steps,model_options,sampler_options", CASES, ids=CASE_IDS)
def test_samples_match_the_ideal_sampler_of_their_step_count(sampler_cls, steps, wrong_steps, model_options,
                                                             sampler_options):
    """Catches a time grid or network time off by one, a wrong posterior, a prior that is
    not uniform over all ids, and a tail that does not denoise (id 0 comes out) or takes
    the other rule. Power: the data distribution (1 step), the ideal sampler of fewer
    steps or of another schedule, and the ideal sampler with the other tail."""
    model, sampler = stand_in(**model_options), sampler_cls(sampler_cls.Config(**sampler_options))
    support, reference = ideal(model, sampler, steps)
    if wrong_steps is None:
        fewer = align(STATES, PROBS, support)
    elif wrong_steps == "default":
        fewer = align(*ideal(stand_in(), sampler_cls(), steps), support)
    else:
        fewer = align(*ideal(model, sampler, wrong_steps), support)
    other_tail = next(cls for cls in TAILS if cls is not sampler_cls)
    swapped = align(*ideal(model, other_tail(sampler.config), steps), support)
    ids, nfe = draw(sampler, model, steps, seed=steps)
    assert nfe == steps + 1
    assert_fits(ids, support, reference, fewer, swapped)


@pytest.mark.parametrize("sampler_cls", [DuoAncestral, DuoGreedyTail])
def test_every_draw_is_a_float64_categorical_draw(sampler_cls):
    """Catches a float32 draw anywhere (the weights or the noise of dlmbench.categorical)
    and a draw that bypasses it; the uniform prior is an exact integer draw."""
    model, steps = stand_in(), 4
    with float64_draws(samplers_module) as seen:
        draw(sampler_cls(), model, steps, n=64)
    expected = steps + (sampler_cls is DuoAncestral)  # every step, and the ancestral tail
    assert seen.categorical["dlmbench_duo.samplers"] == expected
    assert len(seen.floats) == expected  # the race's uniforms, all float64
