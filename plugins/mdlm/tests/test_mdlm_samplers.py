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
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import dlmbench_mdlm.samplers as samplers_module
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.errors import ConfigError
from dlmbench.nfe import count_nfe
from dlmbench.testing.devices import ZeroDenoiser
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


# --- blocks, step split, NFE bound -------------------------------------------------------
def test_block_bounds_tile_the_target_left_to_right():
    """Blocks are contiguous, cover exactly [prefix_len, seq_len), and differ in size by at
    most one (the code's ``sample_subs_guidance`` cuts the target into equal strides)."""
    from dlmbench_mdlm.samplers import block_bounds

    assert block_bounds(0, 6, 2) == [(0, 3), (3, 6)]
    # span 7 in three: edges 2 + floor(7 i / 3) = 2, 4, 6, 9 (worked by hand)
    assert block_bounds(2, 9, 3) == [(2, 4), (4, 6), (6, 9)]
    assert block_bounds(2, 6, 4) == [(2, 3), (3, 4), (4, 5), (5, 6)]  # one position each
    with pytest.raises(ConfigError, match="num_blocks=5 exceeds the 4 generated positions"):
        block_bounds(2, 6, 5)


def test_split_steps_gives_the_remainder_to_the_first_blocks():
    """Each block gets floor(steps / blocks) steps and the first ``steps mod blocks`` one
    more, so the shares add up to ``steps`` (the NFE bound ``steps + num_blocks``)."""
    from dlmbench_mdlm.samplers import split_steps

    assert split_steps(5, 2) == [3, 2]
    assert split_steps(7, 3) == [3, 2, 2]
    assert split_steps(8, 3) == [3, 3, 2]
    assert split_steps(6, 3) == [2, 2, 2]
    with pytest.raises(ConfigError, match="steps=1 is fewer than num_blocks=2; give each block a step"):
        split_steps(1, 2)


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_without_noise_removal_the_nfe_is_the_step_count(num_blocks):
    """``noise_removal=False`` drops the final argmax call of each block: NFE = steps."""
    probs = token_probs(SPEC)
    model = stand_in(SPEC, IndependentDenoiser(probs))
    sampler = MDLMDDPM(MDLMDDPM.Config(num_blocks=num_blocks, noise_removal=False))
    _, nfe = draw(sampler, model, 5, n=4)
    assert nfe == sampler.max_nfe(5) == 5
    with_removal = MDLMDDPM(MDLMDDPM.Config(num_blocks=num_blocks))
    assert with_removal.max_nfe(5) == 5 + num_blocks


def test_batch_cache_scope_evaluates_the_whole_batch_when_any_row_changed():
    """``cache_scope="batch"`` is the code's rule (``_ddpm_caching_update``): the cache is
    all or nothing, so every network call sees all rows; the per-sequence default calls the
    network on the changed rows only (shown here, so the check has power)."""
    n, steps = 8, 32
    calls = {}
    for scope in ("batch", "sequence"):
        net = IndependentDenoiser(token_probs(SPEC), record=True)
        model = stand_in(SPEC, net)
        _, nfe = draw(MDLMDDPMCache(MDLMDDPMCache.Config(cache_scope=scope)), model, steps, n=n)
        calls[scope] = [x.shape[0] for x in net.inputs]
        assert nfe == sum(calls[scope]) / n
    assert all(rows == n for rows in calls["batch"])
    assert any(rows < n for rows in calls["sequence"])


class Float64OutputNet(nn.Module):
    """Returns the same float64 logits tensor at every call (a network may hand out its own
    buffer): the sampler must add its mask bias to a copy, never into this tensor."""

    def __init__(self, probs: torch.Tensor, n: int):
        super().__init__()
        logits = probs.clamp_min(1e-30).log().double()
        logits[:, SPEC.mask_id] = logits.max() + MASK_LEAD
        self.register_buffer("out", logits.expand(n, -1, -1).clone())

    def forward(self, x, sigma):
        return self.out[: x.shape[0]]  # a view of the buffer (the cache asks for fewer rows)


@pytest.mark.parametrize("sampler_cls", [MDLMDDPM, MDLMDDPMCache])
def test_the_network_output_is_never_written_into(sampler_cls):
    n = 16
    net = Float64OutputNet(token_probs(SPEC), n)
    before = net.out.clone()
    ids, _ = draw(sampler_cls(), stand_in(SPEC, net), 4, n=n)
    assert torch.equal(net.out, before)
    assert not bool((ids == SPEC.mask_id).any())


class SigmaRecorder(IndependentDenoiser):
    def __init__(self, probs: torch.Tensor):
        super().__init__(probs)
        self.sigmas: list[torch.Tensor] = []

    def forward(self, x, sigma):
        self.sigmas.append(sigma.clone())
        return super().forward(x, sigma)


def test_a_time_conditioned_network_gets_sigma_of_the_float64_grid():
    """sigma(t) = -log(1 - (1 - eps) t) of the float64 grid ``linspace(1, final_t, steps + 1)``,
    rounded once to float32: at t near 1 a float32 t loses about 1e-5 of sigma (1 - (1 - eps) t
    cancels), far beyond the float32 rounding of sigma itself (6e-8 relative)."""
    steps, eps, final_t = 8, MDLMConfig.from_preset("tiny").noise_eps, 1e-5
    net = SigmaRecorder(token_probs(SPEC))
    draw(MDLMDDPM(), stand_in(SPEC, net, time_conditioning=True), steps, n=3)
    times = [1.0 + i * (final_t - 1.0) / steps for i in range(steps)] + [final_t]  # + noise removal
    expected = torch.tensor([-math.log1p(-(1 - eps) * t) for t in times], dtype=torch.float64)
    got = torch.stack([s.double() for s in net.sigmas])  # (calls, n)
    assert got.shape == (steps + 1, 3)
    assert bool(((got - expected[:, None]).abs() <= 1.2e-7 * expected[:, None]).all())


def test_the_denoiser_works_on_the_device_of_its_input():
    """The time tensor and the SUBS mask bias are built on the input's device (a CPU bias
    added in place into CUDA logits raises). The meta device stands in for an accelerator
    on the CPU suite; its in-place add accepts a CPU operand, hence the check of the bias."""
    from dlmbench_mdlm.samplers import _Denoiser

    zero = ZeroDenoiser(SPEC.vocab_size)
    model = SimpleNamespace(config=SimpleNamespace(time_conditioning=False), spec=SPEC,
                            network=zero.network, conditioning=zero.conditioning)
    denoise = _Denoiser(model, cache=False)
    x = torch.zeros(2, SPEC.seq_len, dtype=torch.long, device="meta")
    out = denoise(x, 0.5)
    assert out.device.type == "meta" and out.shape == (2, SPEC.seq_len, SPEC.vocab_size)
    assert [(t.device.type, t.dtype) for t in zero.times] == [("meta", torch.float64)]
    assert denoise.bias.device.type == "meta"
