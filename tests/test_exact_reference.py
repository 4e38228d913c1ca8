"""The enumerated references of :mod:`dlmbench.testing.exact` on cases with closed forms."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlmbench.categorical import sample_categorical
from dlmbench.testing.exact import (align, chi_square_pvalue, masked_ideal, masked_posterior, samples_for_power,
                                    uniform_ideal)

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, V = 4, 8
STATES = torch.tensor(list(itertools.product([5, 6, 7], repeat=3)))
_G = torch.Generator().manual_seed(0)
PROBS = torch.softmax(2.0 * ((STATES - 5).sum(-1) % 3 == 0).double()
                      + 0.5 * torch.randn(len(STATES), generator=_G, dtype=torch.float64), 0)


def marginals(probs: torch.Tensor) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(STATES - 5, 3).double()
    return torch.einsum("s,slk->lk", probs, onehot)


def product_of_marginals(probs: torch.Tensor) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(STATES - 5, 3).double()
    return (onehot * marginals(probs)[None]).sum(-1).prod(-1)


def tv(support, probs, reference) -> float:
    return float((align(support, probs, STATES) - reference).abs().sum() / 2)


def test_masked_posterior_is_the_conditional_of_the_visible_tokens():
    x = torch.tensor([[MASK, MASK, MASK], [5, MASK, 7], [6, 6, 6]])
    post = masked_posterior(STATES, PROBS, x, MASK, V)
    torch.testing.assert_close(post[0, :, 5:], marginals(PROBS))
    fits = (STATES[:, 0] == 5) & (STATES[:, 2] == 7)
    torch.testing.assert_close(post[1, 1, 5:], PROBS[fits] / PROBS[fits].sum())
    assert torch.equal(post[2].argmax(-1), x[2]) and float(post[2].max(-1).values.min()) == 1.0


def test_one_masked_step_draws_the_product_of_the_marginals():
    """alpha 0 -> 1 in one step: every position unmasks at once, each from its marginal."""
    support, probs = masked_ideal(STATES, PROBS, torch.tensor([0.0, 1.0], dtype=torch.float64), MASK, V)
    assert tv(support, probs, product_of_marginals(PROBS)) < 1e-12


@pytest.mark.parametrize("steps", [4, 16, 64])
def test_masked_ideal_approaches_the_data_within_the_collision_bound(steps):
    """Only two positions unmasking in the same step can bias it: on a uniform alpha grid a
    given pair does so with probability ``sum (d alpha)^2 = 1 / steps``, so the TV from the
    data is at most ``C(3, 2) / steps``; and it is no product sampler."""
    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    support, probs = masked_ideal(STATES, PROBS, alphas, MASK, V)
    assert tv(support, probs, PROBS) <= 3 / steps
    assert tv(support, probs, product_of_marginals(PROBS)) > tv(support, probs, PROBS)


def test_one_position_per_block_is_exact():
    """Blocks of one position, in order, are left-to-right sampling from the conditionals."""
    one_step = torch.tensor([0.0, 1.0], dtype=torch.float64)
    support, probs = masked_ideal(STATES, PROBS, [one_step] * 3, MASK, V, blocks=[[0], [1], [2]])
    assert tv(support, probs, PROBS) < 1e-12


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_both_ideal_samplers_are_exact_for_independent_tokens(steps):
    """With independent positions the true reverse step factorises, so any step count is
    exact once the start is the true prior (alpha = 0 at the first time)."""
    independent = product_of_marginals(PROBS)
    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    assert tv(*masked_ideal(STATES, independent, alphas, MASK, V), independent) < 1e-12
    assert tv(*uniform_ideal(STATES, independent, alphas, V, tail="ancestral"), independent) < 1e-12
    # the joint is not: few uniform-state steps miss the three-way interaction
    assert tv(*uniform_ideal(STATES, PROBS, alphas, V), PROBS) > 0.05


def test_masked_ideal_refuses_an_unreachable_posterior():
    keep = (STATES[:, 0] != 5) | (STATES[:, 1] != 5)  # (5, 5, *) has probability 0
    one_step = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="probability 0"):
        masked_ideal(STATES[keep], PROBS[keep], torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), MASK, V)
    masked_ideal(STATES[keep], PROBS[keep], [one_step] * 3, MASK, V, blocks=[[0], [1], [2]])  # exact: fine


def test_chi_square_fits_the_truth_and_has_the_power_it_promises():
    """Samples from ``PROBS`` fit it; the product of marginals is rejected at the sample size
    samples_for_power names, for every one of several seeds; a row outside the support
    scores 0."""
    wrong = product_of_marginals(PROBS)
    n = samples_for_power(PROBS, wrong, 1e-3)
    for seed in range(5):
        ids = STATES[sample_categorical(PROBS.expand(n, -1), torch.Generator().manual_seed(seed))]
        assert chi_square_pvalue(ids, STATES, PROBS) > 1e-3
        assert chi_square_pvalue(ids, STATES, wrong) < 1e-3
    outside = torch.cat([ids, torch.tensor([[5, 5, MASK]])])
    assert chi_square_pvalue(outside, STATES, PROBS) == 0.0
    # a cell the wrong reference calls impossible: one sample there rejects it
    impossible = torch.cat([PROBS[:-1], torch.zeros(1, dtype=torch.float64)])
    n = samples_for_power(PROBS, impossible, 1e-3)
    assert (1 - float(PROBS[-1])) ** n <= 1e-3 < (1 - float(PROBS[-1])) ** (n - 1)
    ids = STATES[sample_categorical(PROBS.expand(n, -1), torch.Generator().manual_seed(9))]
    assert chi_square_pvalue(ids, STATES, impossible) == 0.0
