"""Duo's exact uniform-state posterior (Duo paper Eq. 4) against brute-force Bayes."""

from __future__ import annotations

import pytest
import torch

from dlmbench_duo import uniform_posterior

K = 4


def brute_force(x: torch.Tensor, zt: int, alpha_t: float, alpha_s: float) -> torch.Tensor:
    """q(z_s | z_t, x) by Bayes: q(z_t | z_s) q(z_s | x) / q(z_t | x), with the marginals
    averaged over ``x``'s classes weighted by ``x_m q(z_t | m)`` (soft ``x``)."""
    alpha_ts = alpha_t / alpha_s
    eye = torch.eye(K, dtype=torch.float64)
    forward_ts = alpha_ts * eye + (1 - alpha_ts) / K  # [z_s, z_t]
    out = torch.zeros(K, dtype=torch.float64)
    weights = torch.zeros(K, dtype=torch.float64)
    for m in range(K):
        q_s = alpha_s * eye[m] + (1 - alpha_s) / K  # q(z_s | x = m)
        q_t = alpha_t * eye[m] + (1 - alpha_t) / K  # q(z_t | x = m)
        posterior = forward_ts[:, zt] * q_s / q_t[zt]
        w = x[m] * q_t[zt]
        out += w * posterior
        weights[m] = w
    return out / weights.sum()


@pytest.mark.parametrize("alpha_t,alpha_s", [(0.2, 0.5), (0.01, 0.03), (0.7, 0.9), (0.4, 1.0)])
def test_matches_brute_force_bayes_and_sums_to_one(alpha_t, alpha_s):
    g = torch.Generator().manual_seed(0)
    soft = torch.softmax(torch.randn(5, K, generator=g, dtype=torch.float64) * 2, -1)
    one_hot = torch.eye(K, dtype=torch.float64)
    for x in torch.cat([soft, one_hot]):
        for zt in range(K):
            got = uniform_posterior(x[None], torch.tensor([zt]), alpha_t, alpha_s)[0]
            torch.testing.assert_close(got.sum(), torch.tensor(1.0, dtype=torch.float64))
            assert bool((got >= 0).all())
            torch.testing.assert_close(got, brute_force(x, zt, alpha_t, alpha_s))


def test_batched_tensor_alphas_and_alpha_s_one_is_the_posterior_of_x():
    g = torch.Generator().manual_seed(1)
    x = torch.softmax(torch.randn(3, 7, K, generator=g, dtype=torch.float64), -1)
    zt = torch.randint(0, K, (3, 7), generator=g)
    alpha_t = torch.rand(3, 1, 1, generator=g, dtype=torch.float64) * 0.9
    post = uniform_posterior(x, zt, alpha_t, 1.0)
    # Bayes: p(x = m | z_t) ∝ x_m q(z_t | m) = x_m (alpha_t [m = z_t] + (1 - alpha_t) / K)
    lik = alpha_t * torch.nn.functional.one_hot(zt, K) + (1 - alpha_t) / K
    expected = x * lik / (x * lik).sum(-1, keepdim=True)
    torch.testing.assert_close(post, expected)
