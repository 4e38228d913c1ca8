"""The duality transform alpha = T(alpha_tilde) (Duo paper Sec. 3), tabulated by the plugin."""

from __future__ import annotations

import pytest
import torch

from dlmbench_duo import DualityTable, duality_alpha_exact, duality_table
from dlmbench_duo.duality import alpha_tilde


@pytest.mark.parametrize("K", [2, 4, 9])
def test_matches_the_argmax_of_gaussian_latents(K):
    """P(argmax(alpha~ e_x + sigma~ eps) = x) = alpha + (1 - alpha) / K, by Monte Carlo."""
    gammas = torch.tensor([-3.0, -1.5, 0.5], dtype=torch.float64)
    exact = duality_alpha_exact(gammas, K)
    g = torch.Generator().manual_seed(K)
    n = 200_000
    for gamma, alpha in zip(gammas, exact):
        a, s = alpha_tilde(gamma)
        w = s * torch.randn(n, K, generator=g, dtype=torch.float64)
        w[:, 0] += a
        hit = (w.argmax(-1) == 0).double()
        p = float(alpha) + (1 - float(alpha)) / K
        se = (p * (1 - p) / n) ** 0.5
        assert abs(float(hit.mean()) - p) < 4 * se + 1e-12


def test_reference_window_for_gpt2_vocabulary():
    """The code's window gamma in [-3.55, -1.85] maps to alpha_t in [0.049, 0.946] for K = 50258
    (chosen to give [0.05, 0.95]: s-sahoo/duo issue #13)."""
    table = duality_table(50258)
    lo_hi = table.alpha(torch.tensor([-1.85, -3.55], dtype=torch.float64))
    assert abs(float(lo_hi[0]) - 0.049) < 1e-3
    assert abs(float(lo_hi[1]) - 0.946) < 1e-3


def test_table_is_monotone_interpolates_the_integral_and_has_the_right_limits():
    table = DualityTable(100, -5.0, -1.0, points=2001)
    assert bool((table.alphas.diff() <= 1e-12).all())  # more noise (larger gamma), smaller alpha
    assert float(table.alphas[0]) > float(table.alphas[-1]) + 0.5
    gammas = torch.tensor([-4.8123, -3.3, -2.0007, -1.01], dtype=torch.float64)
    torch.testing.assert_close(table.alpha(gammas), duality_alpha_exact(gammas, 100), rtol=1e-5, atol=1e-7)
    far = duality_alpha_exact(torch.tensor([12.0, -12.0], dtype=torch.float64), 100)
    assert float(far[0]) < 1e-3 and float(far[1]) > 1 - 1e-9
    with pytest.raises(ValueError, match="tabulated range"):
        table.alpha(torch.tensor([-0.5]))


def test_dalpha_dt_is_the_codes_forward_difference():
    table = DualityTable(50, -5.0, -1.0, points=4001)
    gamma = torch.tensor([-3.0, -2.2], dtype=torch.float64)
    span = 1.7
    a, da = table.alpha_and_dalpha_dt(gamma, span)
    expected = (table.alpha(gamma + 1e-3) - a) / 1e-3 * span
    torch.testing.assert_close(da, expected)
    central = (duality_alpha_exact(gamma + 1e-5, 50) - duality_alpha_exact(gamma - 1e-5, 50)) / 2e-5 * span
    torch.testing.assert_close(da, central, rtol=5e-3, atol=1e-6)
    assert bool((da < 0).all())
