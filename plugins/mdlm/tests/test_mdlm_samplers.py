"""MDLM samplers against an exact denoiser: the data distribution is reproduced, NFE counted.

The stand-in networks return the true ``E[x | z_t]`` (at masked positions) of a known data
distribution, with the ``[MASK]`` logit the largest (the sampler must suppress it), so an
exact sampler must reproduce that distribution: independent tokens at any step count, and
a small joint (27 states) at many steps, where only two tokens unmasking in the same step
(probability about 1/steps) could bias it. The comparison with the ideal sampler of few
steps, a hostile denoiser and the cache are in ``test_mdlm_exact.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import dlmbench_mdlm.samplers as samplers_module
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.errors import ConfigError
from dlmbench.nfe import count_nfe
from dlmbench.testing.draws import float64_draws
from dlmbench_mdlm import MDLM, MDLMConfig, MDLMDDPM, MDLMDDPMCache

SPEC = DataSpec(vocab_size=8, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
N = 4000


pytestmark = pytest.mark.usefixtures("one_thread")


#: the raw [MASK] logit sits this far above the largest one: unsuppressed, it takes all but e^-30
MASK_LEAD = 30.0


class IndependentDenoiser(nn.Module):
    def __init__(self, probs: torch.Tensor, record: bool = False):
        super().__init__()
        logits = probs.clamp_min(1e-30).log()
        logits[:, SPEC.mask_id] = logits.max() + MASK_LEAD
        self.register_buffer("logits", logits)
        self.record = record
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, sigma):
        if self.record:
            self.inputs.append(x.clone())
        return self.logits.expand(x.shape[0], -1, -1).clone()


class JointDenoiser(nn.Module):
    """Exact per-position posterior marginals of an enumerable joint given the unmasked tokens."""

    def __init__(self, states: torch.Tensor, probs: torch.Tensor, vocab_size: int, mask_id: int):
        super().__init__()
        self.register_buffer("states", states)  # (S, L)
        self.register_buffer("probs", probs)  # (S,)
        self.vocab_size, self.mask_id = vocab_size, mask_id

    def forward(self, x, sigma):
        consistent = ((x[:, None, :] == self.states[None]) | (x[:, None, :] == self.mask_id)[:, :, :]).all(-1)
        w = consistent.double() * self.probs[None]  # (B, S)
        onehot = nn.functional.one_hot(self.states, self.vocab_size).double()  # (S, L, K)
        marg = torch.einsum("bs,slk->blk", w, onehot) / w.sum(-1)[:, None, None]
        logits = marg.clamp_min(1e-30).log()
        logits[..., self.mask_id] = logits.max(-1).values + MASK_LEAD
        return logits.float()


def token_probs(spec: DataSpec, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(spec.seq_len, spec.vocab_size, generator=g) + 0.1
    probs[:, :5] = 0.0
    return probs / probs.sum(-1, keepdim=True)


def stand_in(spec: DataSpec, network: nn.Module, **options) -> MDLM:
    model = MDLM(MDLMConfig.from_preset("tiny", **options), spec)
    model.backbone = network
    return model.eval()


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square of per-position counts against ``probs`` ``(L, K)``."""
    stat, dof = 0.0, 0
    for pos in range(probs.shape[0]):
        counts = torch.bincount(samples[:, pos], minlength=probs.shape[1]).double()
        support = probs[pos] > 0
        assert float(counts[~support].sum()) == 0, f"position {pos}: a token outside the support"
        expected = samples.shape[0] * probs[pos, support].double()
        stat += float(((counts[support] - expected) ** 2 / expected).sum())
        dof += int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def draw(sampler, model, steps: int, n: int = N, seed: int = 0, prefix=None, draws=None) -> tuple[torch.Tensor, float]:
    """Samples and NFE per sample; every random draw must be a float64 categorical draw
    (:func:`dlmbench.testing.draws.float64_draws`), recorded into ``draws`` if given."""
    request = SampleRequest(steps=steps, num_samples=n, generator=torch.Generator().manual_seed(seed), prefix=prefix)
    with count_nfe(model) as counter, float64_draws(samplers_module) as seen:
        ids = sampler.sample(model, request)
    assert ids.shape == (n, model.spec.seq_len) and ids.dtype == torch.long
    if draws is not None:
        draws.append(seen)
    return ids, counter.per_sample(n)


@pytest.mark.parametrize("sampler_cls", [MDLMDDPM, MDLMDDPMCache])
@pytest.mark.parametrize("steps", [1, 3, 16])
def test_independent_tokens_are_reproduced(sampler_cls, steps):
    probs = token_probs(SPEC)
    model = stand_in(SPEC, IndependentDenoiser(probs))
    sampler = sampler_cls()
    draws = []
    ids, nfe = draw(sampler, model, steps, seed=steps, draws=draws)
    assert draws[0].categorical, "no categorical draw happened"
    assert chi_square_pvalue(ids, probs) > 1e-3
    assert sampler.max_nfe(steps) == steps + 1
    if sampler.exact_nfe():
        assert nfe == steps + 1
    else:
        assert 0 < nfe <= steps + 1


def test_block_mode_reproduces_and_keeps_later_blocks_masked():
    probs = token_probs(SPEC)
    net = IndependentDenoiser(probs, record=True)
    model = stand_in(SPEC, net)
    sampler = MDLMDDPM(MDLMDDPM.Config(num_blocks=2))
    ids, nfe = draw(sampler, model, 4)
    assert chi_square_pvalue(ids, probs) > 1e-3
    assert nfe == sampler.max_nfe(4) == 4 + 2  # 2 + 2 steps, one noise removal per block
    first_block_calls = net.inputs[:3]  # two steps and the noise removal of block 1
    assert all(bool((x[:, 3:] == SPEC.mask_id).all()) for x in first_block_calls)
    assert not bool((net.inputs[3][:, :3] == SPEC.mask_id).any())  # block 1 is done before block 2
    with pytest.raises(ConfigError):
        draw(sampler, model, 1, n=2)


def test_cache_is_off_for_a_time_conditioned_model():
    probs = token_probs(SPEC)
    model = stand_in(SPEC, IndependentDenoiser(probs), time_conditioning=True)
    _, nfe = draw(MDLMDDPMCache(), model, 50, n=8)
    assert nfe == 51


def joint_pvalue(counts: torch.Tensor, p: torch.Tensor) -> float:
    expected = counts.sum() * p
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((len(p) - 1) / 2), torch.tensor(stat / 2)))


def test_joint_distribution_is_reproduced_at_many_steps():
    spec = DataSpec(vocab_size=8, seq_len=3, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
    states = torch.tensor(list(itertools.product([5, 6, 7], repeat=3)))
    g = torch.Generator().manual_seed(0)
    p = torch.rand(len(states), generator=g, dtype=torch.float64) ** 3  # strongly dependent
    p /= p.sum()
    n = 1500
    model = stand_in(spec, JointDenoiser(states, p, spec.vocab_size, spec.mask_id))
    ids, nfe = draw(MDLMDDPMCache(), model, 256, n=n)
    assert nfe <= spec.seq_len + 1
    index = {tuple(s.tolist()): i for i, s in enumerate(states)}
    counts = torch.bincount(torch.tensor([index[tuple(r)] for r in ids.tolist()]), minlength=len(states)).double()
    assert joint_pvalue(counts, p) > 1e-3
    # the test has power: sampling each position from its marginal would be rejected
    onehot = nn.functional.one_hot(states - 5, 3).double()  # (S, L, 3)
    marginals = torch.einsum("s,slk->lk", p, onehot)
    product = (onehot * marginals[None]).sum(-1).prod(-1)
    assert joint_pvalue(n * product, p) < 1e-6


@pytest.mark.parametrize("sampler_cls", [MDLMDDPM, MDLMDDPMCache])
def test_prefix_is_kept(sampler_cls):
    spec = DataSpec(vocab_size=8, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=2)
    probs = token_probs(spec)
    model = stand_in(spec, IndependentDenoiser(probs))
    prefix = torch.tensor([[5, 6], [7, 7], [6, 5]])
    ids, _ = draw(sampler_cls(), model, 4, n=3, prefix=prefix)
    assert torch.equal(ids[:, :2], prefix)
    assert not bool((ids == spec.mask_id).any())
    with pytest.raises(ConfigError, match="prefix"):
        draw(sampler_cls(), model, 4, n=3)


def test_seeded_output_is_deterministic():
    probs = token_probs(SPEC)
    model = stand_in(SPEC, IndependentDenoiser(probs))
    a, _ = draw(MDLMDDPMCache(), model, 8, n=16, seed=11)
    b, _ = draw(MDLMDDPMCache(), model, 8, n=16, seed=11)
    c, _ = draw(MDLMDDPMCache(), model, 8, n=16, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
