"""MDLM samplers against the ideal sampler of the same step count, with a hostile denoiser.

The stand-in network returns the exact posterior marginals of a small non-product joint
(three tokens, three positions, a three-way interaction that no product of marginals
has), but behind raw outputs a careless sampler would get wrong: the ``[MASK]`` logit is
the largest everywhere (the sampler must suppress it itself, SUBS), unmasked positions
carry confident garbage (the sampler must copy them over), and every position gets an
input-dependent additive offset (softmax-invariant). The reference is the distribution
that the ideal ancestral sampler with the same grid produces, enumerated exactly
(:func:`dlmbench.testing.exact.masked_ideal`): with few steps, positions that unmask in
the same step are drawn independently, so even a perfect sampler is not the data.
Each test also rejects a wrong reference on the same samples (its power).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import dlmbench_mdlm.samplers as samplers_module
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.nfe import count_nfe
from dlmbench.testing.draws import float64_draws
from dlmbench.testing.exact import align, assert_fits, masked_ideal, masked_posterior
from dlmbench_mdlm import MDLM, MDLMConfig, MDLMDDPM, MDLMDDPMCache
from dlmbench_mdlm.samplers import block_bounds, split_steps

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = DataSpec(vocab_size=8, seq_len=3, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
STATES = torch.tensor(list(itertools.product([5, 6, 7], repeat=3)))
_G = torch.Generator().manual_seed(0)
#: strongly dependent: sequences whose tokens sum to 0 mod 3 are e^2 times likelier
PROBS = torch.softmax(2.0 * ((STATES - 5).sum(-1) % 3 == 0).double()
                      + 0.5 * torch.randn(len(STATES), generator=_G, dtype=torch.float64), 0)
#: false-alarm rate of each chi-square check under a correct sampler (seeds are fixed)
#: samples per check: above samples_for_power of every case below (at most about 1.5k)
N = 4000
#: below exp(-744) a float64 probability is exactly 0
ZERO_LOGIT = -1000.0
#: the raw [MASK] logit sits this far above the largest: unsuppressed, it takes all but e^-30
MASK_LEAD = 30.0


def offsets(x: torch.Tensor) -> torch.Tensor:
    """Per-row, per-position logit offsets (softmax-invariant), a function of the input,
    up to 100: far beyond the spread of the logits, so a sampler that mixes positions or
    compares raw logits across them is wrong."""
    code = (x.double() * torch.arange(1, x.shape[-1] + 1, dtype=torch.float64)).sum(-1, keepdim=True)
    return 100.0 * torch.sin(0.7 * code + 1.3 * torch.arange(x.shape[-1]))


class HostileDenoiser(nn.Module):
    """Exact posterior marginals of ``PROBS`` behind a largest mask logit, garbage at
    unmasked positions and input-dependent per-position offsets."""

    def forward(self, x, sigma):
        post = masked_posterior(STATES, PROBS, x, SPEC.mask_id, SPEC.vocab_size)
        logits = torch.where(post > 0, post.clamp_min(1e-300).log(), ZERO_LOGIT)
        logits[..., SPEC.mask_id] = logits.max(-1).values + MASK_LEAD
        shown = x != SPEC.mask_id
        garbage = torch.full_like(logits, ZERO_LOGIT)  # sure of the next token, and surer of the mask
        garbage.scatter_(-1, (5 + (x - 4) % 3)[..., None], MASK_LEAD)
        garbage[..., SPEC.mask_id] = 2 * MASK_LEAD
        logits = torch.where(shown[..., None], garbage, logits)
        return logits + offsets(x)[..., None]


class StaleDenoiser(HostileDenoiser):
    """What a cache that is never refreshed serves: the outputs for the all-mask input."""

    def forward(self, x, sigma):
        return super().forward(torch.full_like(x, SPEC.mask_id), sigma)


def stand_in(**options) -> MDLM:
    model = MDLM(MDLMConfig.from_preset("tiny", **options), SPEC)
    model.backbone = HostileDenoiser()
    return model.eval()


def grid_alphas(steps: int, final_t: float, eps: float) -> torch.Tensor:
    """``alpha_t = 1 - (1 - eps) t`` (log-linear) on the sampler's ``linspace(1, final_t)``."""
    return 1 - (1 - eps) * torch.linspace(1.0, final_t, steps + 1, dtype=torch.float64)


def ideal(model: MDLM, sampler, steps: int, num_blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = sampler.config
    bounds = block_bounds(SPEC.prefix_len, SPEC.seq_len, num_blocks)
    alphas = [grid_alphas(s, cfg.final_t, model.config.noise_eps) for s in split_steps(steps, num_blocks)]
    blocks = [range(lo, hi) for lo, hi in bounds]
    return masked_ideal(STATES, PROBS, alphas, SPEC.mask_id, SPEC.vocab_size, blocks=blocks)


def draw(sampler, model, steps: int, n: int = N, seed: int = 0) -> tuple[torch.Tensor, float]:
    request = SampleRequest(steps=steps, num_samples=n, generator=torch.Generator().manual_seed(seed))
    with count_nfe(model) as counter:
        ids = sampler.sample(model, request)
    return ids, counter.per_sample(n)


#: (steps, the wrong reference, model options, sampler options); the wrong reference is
#: the data (None), the ideal sampler of fewer steps (an int) or that of the default
#: schedule ("default"); the coarse schedule (alpha_1 = 0.3, last time 0.3) leaves about 30% of the positions to the noise removal
CASES = [(1, None, {}, {}), (2, 1, {}, {}), (4, 2, {}, {}), (32, 4, {}, {}),
         (2, "default", {"noise_eps": 0.3}, {"final_t": 0.3})]
CASE_IDS = ["1-step", "2-steps", "4-steps", "32-steps", "coarse-2-steps"]


@pytest.mark.parametrize("sampler_cls", [MDLMDDPM, MDLMDDPMCache])
@pytest.mark.parametrize("steps,wrong_steps,model_options,sampler_options", CASES, ids=CASE_IDS)
def test_samples_match_the_ideal_sampler_of_their_step_count(sampler_cls, steps, wrong_steps, model_options,
                                                             sampler_options):
    """Catches a dropped mask suppression (masks come out), unmasked tokens not carried
    over (garbage comes in), a wrong unmasking probability or time grid, a noise removal
    that samples or is skipped, and a stale cache. Power: the data distribution (1 step),
    the ideal sampler of fewer steps, or that of another schedule."""
    model, sampler = stand_in(**model_options), sampler_cls(sampler_cls.Config(**sampler_options))
    support, reference = ideal(model, sampler, steps)
    if wrong_steps is None:
        wrong = align(STATES, PROBS, support)
    elif wrong_steps == "default":
        wrong = align(*ideal(stand_in(), sampler_cls(), steps), support)
    else:
        wrong = align(*ideal(model, sampler, wrong_steps), support)
    ids, _ = draw(sampler, model, steps, seed=steps)
    assert_fits(ids, support, reference, wrong)


def test_block_mode_matches_the_ideal_semi_autoregressive_sampler():
    """Two blocks, two steps each: block 1 (position 0) is finished, noise removal
    included, before block 2 moves. Power: the one-block ideal sampler of 4 steps."""
    model, sampler = stand_in(), MDLMDDPM(MDLMDDPM.Config(num_blocks=2))
    support, reference = ideal(model, sampler, 4, num_blocks=2)
    wrong = align(*ideal(model, sampler, 4), support)
    ids, nfe = draw(sampler, model, 4, seed=7)
    assert nfe == 4 + 2
    assert_fits(ids, support, reference, wrong)


def test_cached_sampler_is_bit_identical_with_an_input_dependent_denoiser():
    """The cache may only skip evaluations whose input is unchanged: with a denoiser whose
    output depends on its input, a stale entry changes the samples. Many steps, so most
    steps change nothing and the cache is used."""
    model = stand_in()
    plain, nfe_plain = draw(MDLMDDPM(), model, 64, n=256, seed=5)
    cached, nfe_cached = draw(MDLMDDPMCache(), model, 64, n=256, seed=5)
    batch, nfe_batch = draw(MDLMDDPMCache(MDLMDDPMCache.Config(cache_scope="batch")), model, 64, n=256, seed=5)
    assert torch.equal(plain, cached) and torch.equal(plain, batch)
    plain_64 = plain
    assert nfe_plain == 65
    assert nfe_cached <= SPEC.seq_len + 1  # one evaluation per distinct state of a sequence
    assert nfe_cached <= nfe_batch <= nfe_plain
    for num_blocks in (2, 3):
        plain, _ = draw(MDLMDDPM(MDLMDDPM.Config(num_blocks=num_blocks)), model, 12, n=256, seed=6)
        cached, _ = draw(MDLMDDPMCache(MDLMDDPMCache.Config(num_blocks=num_blocks)), model, 12, n=256, seed=6)
        assert torch.equal(plain, cached)
    # power: the outputs for the all-mask input, served stale at every step, change the samples
    stale = stand_in()
    stale.backbone = StaleDenoiser()
    assert not torch.equal(draw(MDLMDDPM(), stale, 64, n=256, seed=5)[0], plain_64)


@pytest.mark.parametrize("sampler_cls", [MDLMDDPM, MDLMDDPMCache])
def test_every_draw_is_a_float64_categorical_draw(sampler_cls):
    """Catches a float32 draw anywhere (the weights or the noise of dlmbench.categorical)
    and a draw that bypasses it (multinomial, a hand-rolled Gumbel in float32)."""
    model = stand_in()
    with float64_draws(samplers_module) as seen:
        ids, _ = draw(sampler_cls(), model, 4, n=64)
    assert 1 <= seen.categorical["dlmbench_mdlm.samplers"] <= 4  # one per step that had a mask
    assert len(seen.floats) == seen.categorical["dlmbench_mdlm.samplers"]  # the race's uniforms, float64
    assert not bool((ids == SPEC.mask_id).any())
