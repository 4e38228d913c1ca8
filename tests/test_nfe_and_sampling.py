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


def test_rare_tokens_are_not_truncated_in_float64():
    """The float32 Gumbel pitfall: a 1e-6-probability token must still appear at its rate."""
    g = torch.Generator().manual_seed(2)
    logits = torch.tensor([0.0, math.log(1e-4)]).expand(400_000, 2)
    draws = sample_from_logits(logits, g)
    rate = float(draws.double().mean())
    p = 1e-4 / (1 + 1e-4)
    assert abs(rate - p) < 5 * math.sqrt(p / 400_000)


def test_same_seed_same_draws():
    p = torch.rand(10, 7)
    a = sample_categorical(p, torch.Generator().manual_seed(5))
    b = sample_categorical(p, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
