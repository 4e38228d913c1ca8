"""Duo samplers against an exact denoiser.

With Duo's parameterisation ``p_theta(z_s | z_t) = q(z_s | z_t, x = x_theta)``, the plug-in
posterior equals ``sum_x w(x) q(z_s | z_t, x)`` with ``w(x) ∝ x_theta(x) q(z_t | x)``. It
is the true reverse step when ``w`` is the true ``p(x^l | z_t)``, i.e. when
``x_theta^l(x) ∝ p(x^l = x | z_t^{-l})``, the prediction from the *other* positions. For
independent tokens that is just the data marginal ``pi_l``, at every ``t``; for a small
joint it is enumerated. The ancestral sampler must then reproduce the data distribution
(independent tokens: at any step count). Greedy-Tail, by design, ends with the argmax of
``x_theta``: for independent tokens, the mode of each ``pi_l``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import dlmbench_duo.samplers as samplers_module
from dlmbench.data import DataSpec, SampleRequest
from dlmbench.errors import ConfigError
from dlmbench.nfe import count_nfe
from dlmbench.testing.devices import ZeroDenoiser
from dlmbench.testing.draws import float64_draws
from dlmbench_duo import Duo, DuoAncestral, DuoConfig, DuoGreedyTail

SPEC = DataSpec(vocab_size=8, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
N = 4000


pytestmark = pytest.mark.usefixtures("one_thread")


class IndependentDenoiser(nn.Module):
    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", probs.clamp_min(1e-30).log())

    def forward(self, x, sigma):
        return self.logits.expand(x.shape[0], -1, -1).clone()


class JointDenoiser(nn.Module):
    """``x_theta^l(k) ∝ sum_{s: s_l = k} p(s) prod_{j != l} q_t(z^j | s_j)``, alpha from sigma."""

    def __init__(self, states: torch.Tensor, probs: torch.Tensor, vocab_size: int):
        super().__init__()
        self.register_buffer("states", states)  # (S, L)
        self.register_buffer("probs", probs)  # (S,)
        self.K = vocab_size

    def forward(self, x, sigma):
        a = torch.exp(-sigma.double())[:, None, None]
        lik = a * (x[:, None, :] == self.states[None]) + (1 - a) / self.K  # (B, S, L)
        others = lik.prod(-1, keepdim=True) / lik  # prod over j != l
        w = self.probs[None, :, None] * others  # (B, S, L)
        onehot = nn.functional.one_hot(self.states, self.K).double()  # (S, L, K)
        x_theta = torch.einsum("bsl,slk->blk", w, onehot)
        return (x_theta / x_theta.sum(-1, keepdim=True)).clamp_min(1e-30).log().float()


def token_probs(spec: DataSpec, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(spec.seq_len, spec.vocab_size, generator=g) + 0.1
    probs[:, :5] = 0.0
    return probs / probs.sum(-1, keepdim=True)


def stand_in(spec: DataSpec, network: nn.Module) -> Duo:
    model = Duo(DuoConfig.from_preset("tiny"), spec)
    model.backbone = network
    return model.eval()


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    stat, dof = 0.0, 0
    for pos in range(probs.shape[0]):
        counts = torch.bincount(samples[:, pos], minlength=probs.shape[1]).double()
        support = probs[pos] > 0
        assert float(counts[~support].sum()) == 0, f"position {pos}: a token outside the support"
        expected = samples.shape[0] * probs[pos, support].double()
        stat += float(((counts[support] - expected) ** 2 / expected).sum())
        dof += int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def draw(sampler, model, steps, n=N, seed=0, prefix=None, draws=None):
    """Samples and NFE per sample; every random draw must be a float64 categorical draw
    (:func:`dlmbench.testing.draws.float64_draws`), recorded into ``draws`` if given."""
    request = SampleRequest(steps=steps, num_samples=n, generator=torch.Generator().manual_seed(seed), prefix=prefix)
    with count_nfe(model) as counter, float64_draws(samplers_module) as seen:
        ids = sampler.sample(model, request)
    assert ids.shape == (n, model.spec.seq_len) and ids.dtype == torch.long
    if draws is not None:
        draws.append(seen.categorical.get(samplers_module.__name__, 0))
    return ids, counter.per_sample(n)


@pytest.mark.parametrize("steps", [1, 3, 16])
def test_ancestral_reproduces_independent_tokens(steps):
    probs = token_probs(SPEC)
    model = stand_in(SPEC, IndependentDenoiser(probs))
    sampler = DuoAncestral()
    draws = []
    ids, nfe = draw(sampler, model, steps, seed=steps, draws=draws)
    assert draws == [steps + 1]  # every step and the final posterior draw
    assert chi_square_pvalue(ids, probs) > 1e-3
    assert nfe == sampler.max_nfe(steps) == steps + 1 and sampler.exact_nfe()


@pytest.mark.parametrize("steps", [1, 8])
def test_greedy_tail_ends_on_the_argmax(steps):
    probs = token_probs(SPEC)
    model = stand_in(SPEC, IndependentDenoiser(probs))
    sampler = DuoGreedyTail()
    draws = []
    ids, nfe = draw(sampler, model, steps, n=200, draws=draws)
    assert draws == [steps]  # the tail is an argmax, not a draw
    assert torch.equal(ids, probs.argmax(-1).expand(200, -1))
    assert nfe == sampler.max_nfe(steps) == steps + 1


def joint_pvalue(counts: torch.Tensor, p: torch.Tensor) -> float:
    expected = counts.sum() * p
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((len(p) - 1) / 2), torch.tensor(stat / 2)))


def test_ancestral_reproduces_a_joint_distribution_at_many_steps():
    K = 4
    spec = DataSpec(vocab_size=K, seq_len=3, pad_id=0, bos_id=0, eos_id=0, mask_id=0)
    states = torch.tensor(list(itertools.product([1, 2, 3], repeat=3)))
    g = torch.Generator().manual_seed(0)
    p = torch.rand(len(states), generator=g, dtype=torch.float64) ** 3
    p /= p.sum()
    n = 2000
    model = stand_in(spec, JointDenoiser(states, p, K))
    ids, nfe = draw(DuoAncestral(), model, 128, n=n)
    assert nfe == 129
    index = {tuple(s.tolist()): i for i, s in enumerate(states)}
    assert all(tuple(r) in index for r in ids.tolist()), "a sample outside the support"
    counts = torch.bincount(torch.tensor([index[tuple(r)] for r in ids.tolist()]), minlength=len(states)).double()
    assert joint_pvalue(counts, p) > 1e-3
    onehot = nn.functional.one_hot(states - 1, 3).double()
    product = (onehot * torch.einsum("s,slk->lk", p, onehot)[None]).sum(-1).prod(-1)
    assert joint_pvalue(n * product, p) < 1e-6  # a factorised sampler would be caught


@pytest.mark.parametrize("sampler_cls", [DuoAncestral, DuoGreedyTail])
def test_prefix_is_kept_and_seeds_are_deterministic(sampler_cls):
    spec = DataSpec(vocab_size=8, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=2)
    model = stand_in(spec, IndependentDenoiser(token_probs(spec)))
    prefix = torch.tensor([[5, 6], [7, 7], [0, 1]])
    a, _ = draw(sampler_cls(), model, 4, n=3, prefix=prefix, seed=1)
    b, _ = draw(sampler_cls(), model, 4, n=3, prefix=prefix, seed=1)
    assert torch.equal(a[:, :2], prefix) and torch.equal(a, b)
    with pytest.raises(ConfigError, match="prefix"):
        draw(sampler_cls(), model, 4, n=3)


def test_time_conditioning_is_fed_along_the_grid():
    seen = []

    class Spy(IndependentDenoiser):
        def forward(self, x, sigma):
            seen.append(sigma.clone())
            return super().forward(x, sigma)

    model = stand_in(SPEC, Spy(token_probs(SPEC)))
    draw(DuoAncestral(), model, 4, n=2)
    grid = torch.linspace(1.0, 1e-5, 5, dtype=torch.float64)
    expected = -torch.log(1 - (1 - 1e-3) * grid)  # steps at t_0..t_3, the tail at t_4
    torch.testing.assert_close(torch.stack([s[0] for s in seen]).double(), expected, rtol=1e-5, atol=1e-7)


def test_sigma_is_computed_from_the_float64_time():
    """sigma = -log(1 - (1 - eps) t) of the float64 grid, rounded once to float32: near t = 1
    the alpha of a float32 t cancels (1 - 0.999 t) and moves sigma by about 2e-6 relative,
    far beyond the 6e-8 of float32 rounding that this check allows."""
    seen = []

    class Spy(IndependentDenoiser):
        def forward(self, x, sigma):
            seen.append(sigma.clone())
            return super().forward(x, sigma)

    steps, eps = 8, DuoConfig.from_preset("tiny").noise_eps
    draw(DuoAncestral(), stand_in(SPEC, Spy(token_probs(SPEC))), steps, n=2)
    times = [1.0 + i * (1e-5 - 1.0) / steps for i in range(steps)] + [1e-5]
    expected = torch.tensor([-math.log(1 - (1 - eps) * t) for t in times], dtype=torch.float64)
    got = torch.stack([s.double() for s in seen])  # (steps + 1, 2)
    assert got.shape == (steps + 1, 2)
    assert bool(((got - expected[:, None]).abs() <= 1.2e-7 * expected[:, None]).all())


def test_the_time_is_made_on_the_device_of_the_input():
    """The meta device stands in for an accelerator on the CPU suite: the time tensor that
    the conditioning receives is built on the ids' device, in float64."""
    from types import SimpleNamespace

    zero = ZeroDenoiser(SPEC.vocab_size)
    model = SimpleNamespace(network=zero.network, conditioning=zero.conditioning)
    x = torch.zeros(2, SPEC.seq_len, dtype=torch.long, device="meta")
    probs = DuoAncestral()._x_theta(model, x, 0.5, 1)
    assert probs.device.type == "meta" and probs.shape == (2, SPEC.seq_len - 1, SPEC.vocab_size)
    assert [(t.device.type, t.dtype) for t in zero.times] == [("meta", torch.float64)]
