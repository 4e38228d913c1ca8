"""NFE counting and float64 categorical sampling."""

from __future__ import annotations

import math

import torch

from dlmbench.categorical import sample_categorical, sample_from_logits
from dlmbench.nfe import count_nfe


class Net(torch.nn.Module):
    def forward(self, x, t=None):
        return x * 2


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = Net()

    @property
    def network(self):
        return self.net


def test_counts_rows_so_batched_guidance_counts_twice():
    model = Wrapper()
    x = torch.zeros(4, 3)
    with count_nfe(model) as c:
        model.network(x)                    # one ordinary step
        model.network(torch.cat([x, x]))    # cond + uncond batched: two evaluations
        model.network(x=x)                  # keyword argument
    assert c.calls == 3 and c.rows == 16 and c.per_sample(4) == 4.0
    model.network(x)  # outside the block: not counted
    assert c.rows == 16


def test_categorical_is_float64_and_matches_probabilities():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 40_000
    draws = sample_categorical(p.expand(n, 4), g)
    counts = torch.bincount(draws, minlength=4).double()
    expected = p.double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 dof, p = 0.001


def test_unnormalised_weights_and_zero_probabilities():
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([0.0, 2.0, 0.0, 6.0]).expand(20_000, 4)
    draws = sample_categorical(w, g)
    assert set(draws.unique().tolist()) <= {1, 3}
    frac = float((draws == 3).double().mean())
    assert abs(frac - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 20_000)


def test_rare_tokens_appear_at_their_rate():
    """A 1e-4 token among 400k draws, within five binomial standard errors (about 80% of
    its rate): catches a floor, top-k or threshold that drops small weights. It cannot see
    float32 noise, which moves such a rate by about 2**-25 (the uniforms' grid); the two
    tests below guard the precision."""
    g = torch.Generator().manual_seed(2)
    n = 400_000
    logits = torch.tensor([0.0, math.log(1e-4)]).expand(n, 2)
    draws = sample_from_logits(logits, g)
    rate = float(draws.double().mean())
    p = 1e-4 / (1 + 1e-4)
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_draws_are_the_float64_exponential_race_of_the_generator():
    """The documented algorithm, recomputed: ``argmax(p / E)`` with ``E = -log1p(-U)`` and
    ``U`` the generator's float64 uniforms. Float32 uniforms (the Gumbel pitfall of Zheng
    et al., arXiv 2409.02908) come from a different stream and change the draws; any other
    draw (multinomial, Gumbel-max) does too."""
    g = torch.Generator().manual_seed(3)
    p = torch.rand(2000, 7, generator=g, dtype=torch.float64)
    draws = sample_categorical(p, torch.Generator().manual_seed(4))
    replay = torch.Generator().manual_seed(4)
    u = torch.rand(p.shape, generator=replay, dtype=torch.float64)
    assert torch.equal(draws, torch.argmax(p / -torch.log1p(-u), dim=-1))


def test_weights_beyond_the_float32_range_are_drawn_exactly():
    """Unnormalised weights of any float64 scale: in float32, 1e-60 underflows to 0 and 1e60
    overflows to inf, and every row draws index 0 (a tie). Such weights occur: MDLM's step
    weights are ``x_theta (alpha_s - alpha_t)``, tiny for a rare token at many steps."""
    n = 20_000
    for scale in (1e-60, 1e60):
        w = torch.tensor([1.0, 3.0], dtype=torch.float64).mul(scale).expand(n, 2)
        frac = float(sample_categorical(w, torch.Generator().manual_seed(5)).double().mean())
        assert abs(frac - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n), (scale, frac)


def test_same_seed_same_draws():
    p = torch.rand(10, 7)
    a = sample_categorical(p, torch.Generator().manual_seed(5))
    b = sample_categorical(p, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_to_generation_strips_the_prefix_cuts_at_eos_and_pairs_each_row_with_its_task_strings():
    """Row i of the samples is scored against reference i and source i, so only the first
    ``len(ids)`` of the task's strings come along (a run may sample fewer rows than the task
    has). Catches dropping either list or passing them all on unpaired."""
    from dlmbench.data import DataSpec
    from dlmbench.sampling import to_generation
    from dlmbench.task import TaskData
    from dlmbench.tokenizer import TextTokenizer

    tok = TextTokenizer.word_level(["a", "b", "c"])
    a, b, c = (tok.encode(w)[0] for w in "abc")
    eos = tok.eos_id
    ids = torch.tensor([[a, a, b, c, eos, a], [b, b, c, c, c, c], [c, c, eos, b, b, b]])
    empty = torch.zeros(0, 6, dtype=torch.long)
    task = TaskData("t", DataSpec(tok.vocab_size, 6, 0, 2, 3, 4, prefix_len=2), tok, empty, empty,
                    references=["r0", "r1", "r2", "r3"], sources=["s0", "s1", "s2", "s3"])
    gen = to_generation(ids, tok, 2, task)
    assert gen.ids is ids
    assert gen.tokens == [[b, c], [c, c, c, c], []]
    assert gen.texts == ["b c", "c c c c", ""]
    assert gen.references == ["r0", "r1", "r2"] and gen.sources == ["s0", "s1", "s2"]
    alone = to_generation(ids, tok, 2)
    assert alone.references is None and alone.sources is None and alone.texts == gen.texts


def test_draws_happen_on_the_device_of_the_weights():
    """The race's uniforms are drawn where the weights live (an accelerator's weights are
    not copied to the generator's device). The meta device stands in for an accelerator
    on the CPU suite: it takes a CPU generator and keeps shapes and dtypes."""
    w = torch.ones(3, 5, 4, device="meta")
    out = sample_categorical(w, torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (3, 5) and out.dtype == torch.long


def test_temperature_divides_the_logits():
    """``softmax(logits / T)``: at T = 2 the draws are those of T = 1 on the halved logits
    (the same generator seed gives the same exponential race), and not those of T = 1."""
    logits = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hot = sample_from_logits(logits, torch.Generator().manual_seed(1), temperature=2.0)
    assert torch.equal(hot, sample_from_logits(logits / 2, torch.Generator().manual_seed(1)))
    assert not torch.equal(hot, sample_from_logits(logits, torch.Generator().manual_seed(1)))


def test_bf16_logits_are_drawn_in_float64():
    """A bf16 network's logits are promoted before the softmax: the draws equal those of the
    same logits in float64 (a bf16 softmax rounds probabilities by up to 2^-9, which flips
    a few of these 8192 races)."""
    logits = torch.randn(8192, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for temperature in (1.0, 0.5):
        a = sample_from_logits(logits, torch.Generator().manual_seed(1), temperature)
        b = sample_from_logits(logits.double(), torch.Generator().manual_seed(1), temperature)
        assert torch.equal(a, b)


def test_seeds_per_micro_batch_are_fixed():
    """``seed_for`` is part of every recorded run (the seed of micro-batch m of run seed s):
    ``(1_000_003 s + 7_919 m) mod (2^63 - 1)``, a non-negative int64. Values worked by
    hand; for s = 2^62, 2^63 = 1 (mod 2^63 - 1) gives 2^62 * 1_000_003 = 2^63 * 500_001 + 2^62
    = 500_001 + 2^62."""
    from dlmbench.sampling import seed_for

    assert seed_for(0, 0) == 0
    assert seed_for(1, 0) == 1_000_003
    assert seed_for(0, 1) == 7_919
    assert seed_for(3, 2) == 3_000_009 + 15_838
    assert seed_for(2**62, 0) == 2**62 + 500_001
    assert seed_for(2**63 - 1, 5) == 5 * 7_919  # the modulus itself is 0
    for s, m in [(2**62, 0), (2**63 - 2, 7), (12345, 678)]:
        assert 0 <= seed_for(s, m) < 2**63 - 1
        torch.Generator().manual_seed(seed_for(s, m))  # a valid generator seed
