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


def test_float32_gammas_are_evaluated_in_float64():
    """A float32 gamma is widened before ``exp(-gamma / 2)`` and the table position are taken.
    Catches computing either in float32: a float32 ``mu`` or table position moves alpha by
    ~1e-7, far above the float64 quadrature's rounding."""
    g32 = torch.tensor([-4.25, -3.0, -2.2, -1.5], dtype=torch.float32)
    g64 = g32.double()  # the same numbers
    exact = duality_alpha_exact(g32, 100)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, duality_alpha_exact(g64, 100), rtol=0, atol=1e-15)
    table = duality_table(100)
    torch.testing.assert_close(table.alpha(g32), table.alpha(g64), rtol=0, atol=1e-15)


def test_default_grid_has_a_node_every_1e_3_so_the_window_ends_read_exactly():
    """The default table is 4001 float64 nodes over [-5, -1] (step 1e-3, the forward-difference
    step): the code's window ends -3.55 and -1.85 (s-sahoo/duo issue #13) are nodes and read
    with no interpolation error. Catches another node count (linear-interpolation error ~1e-8
    between nodes) or a float32 grid (nodes off by ~1e-7 in gamma)."""
    table = duality_table(100)
    assert table.vocab_size == 100
    nodes = torch.tensor([-5.0, -3.55, -2.0, -1.85, -1.0], dtype=torch.float64)
    torch.testing.assert_close(table.alpha(nodes), duality_alpha_exact(nodes, 100), rtol=0, atol=1e-13)


def test_range_ends_read_the_end_nodes_and_nothing_outside_is_extrapolated():
    """gamma exactly at gamma_lo / gamma_hi, or within the 1e-9 allowance for rounding of
    ``gamma_min + t * span``, reads the end node; further out it raises. Catches an off-by-one in
    either clamp of the interpolation position (reads the neighbouring node, indexes past the
    end, or extrapolates from the last-but-one segment), a dropped clamp (wraps round to
    ``table[-1]`` below the range, extrapolates past the last node above it) and a shifted,
    widened or non-inclusive allowance."""
    lo, hi = -3.0, -1.0
    table = DualityTable(100, lo, hi, points=101)  # step 0.02: a neighbouring node is far off
    ends = torch.tensor([lo, hi], dtype=torch.float64)
    exact = duality_alpha_exact(ends, 100)
    torch.testing.assert_close(table.alpha(ends), exact, rtol=0, atol=1e-13)
    near = table.alpha(torch.tensor([lo - 1e-9, hi + 1e-9], dtype=torch.float64))
    torch.testing.assert_close(near, exact, rtol=0, atol=1e-9)  # |dalpha/dgamma| < 1
    assert float(table.alphas.min()) <= float(near.min()) and float(near.max()) <= float(table.alphas.max())
    for outside in (lo - 2e-9, hi + 2e-9, lo - 0.5):
        with pytest.raises(ValueError, match="tabulated range"):
            table.alpha(torch.tensor([outside], dtype=torch.float64))
