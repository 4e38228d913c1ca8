"""Path and parameterisation identities (ELF paper Sec. 3.1, Eq. 1, Alg. 3, 5-6)."""

from __future__ import annotations

import math

import pytest
import torch

from dlmbench_elf.path import FlowPath, LogitNormal, LogUniformScale, sc_cfg_target
from dlmbench_elf.samplers import time_grid

pytestmark = pytest.mark.usefixtures("one_thread")

torch.set_default_dtype(torch.float32)


def _xzt(seed: int = 0, t_lo: float = 0.0, t_hi: float = 0.9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    t = t_lo + (t_hi - t_lo) * torch.rand(5, generator=g, dtype=torch.float64)
    return x, eps, t


def test_interpolation_and_velocity_of_the_exact_prediction():
    path = FlowPath(noise_scale=2.0, t_eps=0.05)
    x, eps, t = _xzt(t_hi=0.95)
    s = path.sample(x, eps, t)
    tb = t.view(-1, 1, 1)
    assert torch.allclose(s.z, tb * x + (1 - tb) * 2.0 * eps)
    # below the clamp the target is exactly dz/dt = x - s_n eps
    assert torch.allclose(s.v, x - 2.0 * eps, atol=1e-12)
    # the x-prediction -> velocity conversion of the exact x is that velocity
    assert torch.allclose(path.velocity(x, s.z, t), x - 2.0 * eps, atol=1e-12)


def test_velocity_and_data_are_inverse_and_clamped():
    path = FlowPath(noise_scale=2.0, t_eps=0.05)
    x, eps, t = _xzt(t_lo=0.0, t_hi=1.0)
    t[0] = 0.99  # inside the clamp
    z = path.interpolate(x, eps, t)
    v = path.velocity(x, z, t)
    assert torch.allclose(path.data(v, z, t), x, atol=1e-12)
    # clamp: (x - z) / max(1 - t, 0.05), as the code's net_out_to_v_x
    assert torch.allclose(v[0], (x[0] - z[0]) / 0.05)
    # hence the x-space form of the loss: ||v_hat - v||^2 = ||x_hat - x||^2 / max(1-t, .05)^2
    x_hat = x + 0.1
    lhs = (path.velocity(x_hat, z, t) - v).pow(2)
    rhs = (x_hat - x).pow(2) / (1 - t).clamp_min(0.05).view(-1, 1, 1).pow(2)
    assert torch.allclose(lhs, rhs)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.9, 0.95])
def test_euler_last_step_lands_exactly_on_x_hat(t):
    path = FlowPath()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    x_hat = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(path.euler(z, x_hat, t, 1.0), x_hat, atol=1e-12)


def test_euler_step_follows_the_path_of_the_exact_x():
    """With the exact x-prediction an Euler step moves along the straight path."""
    path = FlowPath()
    x, eps, _ = _xzt()
    z = path.interpolate(x, eps, 0.2)
    assert torch.allclose(path.euler(z, x, 0.2, 0.7), path.interpolate(x, eps, 0.7), atol=1e-12)


def test_sde_churn_reduces_to_the_ode_step_at_gamma_zero():
    path = FlowPath()
    x, eps, _ = _xzt()
    z = path.interpolate(x, eps, 0.3)
    noise = torch.randn_like(z)
    z_b, t_b = path.churn(z, 0.3, 0.5, gamma=0.0, eps=noise)
    assert t_b == 0.3 and torch.equal(z_b, z)
    x_hat = x * 0.9
    assert torch.equal(path.euler(z_b, x_hat, t_b, 0.5), path.euler(z, x_hat, 0.3, 0.5))


def test_sde_churn_code_form():
    """``_sde_step`` of lillian039/ELF@b29d883 by hand: t = .4 -> t' = .6, gamma 1.5 gives
    alpha = 1 - 1.5 * .2 = .7, so t_b = .28 and z_b = .7 z + .3 * 2 eps = .7 - .15 = .55
    for z = 1, eps = -.25 (a z that is not 2 eps, so z_b depends on alpha)."""
    path = FlowPath(noise_scale=2.0)
    z = torch.ones(1, 1, 1, dtype=torch.float64)
    e = torch.full_like(z, -0.25)
    z_b, t_b = path.churn(z, 0.4, 0.6, gamma=1.5, eps=e)
    assert math.isclose(t_b, 0.28)
    assert torch.allclose(z_b, torch.full_like(z, 0.55))
    # alpha = 1 - 5 * .9 < 0 is clipped to 0: all noise, t_b = 0
    z_b, t_b = path.churn(z, 0.0, 0.9, gamma=5.0, eps=e)
    assert t_b == 0.0 and torch.allclose(z_b, torch.full_like(z, -0.5))


def test_time_distributions():
    g = torch.Generator().manual_seed(0)
    t = LogitNormal(-1.5, 0.8).sample((20000,), g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.median()) - 1 / (1 + math.exp(1.5))) < 0.01  # median ~0.18
    p = LogitNormal(0.8, 0.8).sample((20000,), g)
    assert abs(float(p.median()) - 0.69) < 0.01
    w = LogUniformScale(0.5, 5.0).sample(20000, g)
    assert float(w.min()) >= 0.5 - 1e-6 and float(w.max()) <= 5.0 + 1e-6
    # log(1 + w) is uniform on [log 1.5, log 6]
    u = (torch.log1p(w) - math.log(1.5)) / math.log(4.0)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005


@pytest.mark.parametrize("mean, median", [(math.log(3.0), 0.75), (-math.log(3.0), 0.25)])
def test_logit_normal_median_is_the_sigmoid_of_the_mean(mean, median):
    """sigmoid is increasing, so the median of sigmoid(N(m, s^2)) is sigmoid(m); for
    m = +-log 3 that is 3/4 and 1/4 by hand. Catches a wrong sign of m (1/4 and 3/4 swap), a
    wrong constant or operator. The sample median agrees too (its sd is
    1 / (2 f(median) sqrt(n)) ~ 0.003 at n = 4001)."""
    d = LogitNormal(mean, 0.8)
    assert d.median() == pytest.approx(median, abs=1e-12)
    draws = d.sample((4001,), torch.Generator().manual_seed(1))
    assert abs(float(draws.median()) - median) < 0.02


def test_time_grids():
    g = torch.Generator().manual_seed(0)
    grid = time_grid(8, "logit-normal", g)
    assert grid.shape == (9,) and grid.dtype == torch.float64
    assert grid[0] == 0 and grid[-1] == 1 and bool((grid.diff() >= 0).all())
    again = time_grid(8, "logit-normal", torch.Generator().manual_seed(0))
    assert torch.equal(grid, again)
    assert not torch.equal(grid, time_grid(8, "logit-normal", g))  # random per call
    assert torch.allclose(time_grid(4, "uniform", None), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    assert torch.equal(time_grid(1, "logit-normal", g), torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        time_grid(0, "uniform", None)


def test_sc_cfg_fixed_point_by_hand():
    """The SC-CFG regression's fixed point is w E[v|x'] + (1 - w) E[v|empty] (paper Alg. 3, Eq. 3).

    A case small enough to compute by hand: at one (z, t) the data x is +1 or -1 with
    probabilities 0.25 / 0.75 and the self-conditioning signal x' equals x (perfectly
    informative). Then E[v | x'] = (x' - z)/(1-t) and E[v | empty] = (E x - z)/(1-t).
    We regress a lookup table f(x', m) on the code's target with exact expectations
    (m = 0 rows: plain v with a zero SC input; m = 1 rows: sc_cfg_target with v_c, v_u
    held fixed at the current table) and check it converges to the closed form.
    """
    z, t = 0.4, 0.5
    xs = torch.tensor([1.0, -1.0], dtype=torch.float64)
    probs = torch.tensor([0.25, 0.75], dtype=torch.float64)
    v_of = (xs - z) / (1 - t)  # the velocity of each data point at (z, t)
    e_v = float((probs * v_of).sum())  # E[v | empty] = (0.25*1.2 + 0.75*(-2.8)) = -1.8
    assert math.isclose(e_v, -1.8)
    for w_val in (0.5, 1.0, 3.0):
        w = torch.tensor([w_val], dtype=torch.float64)
        f_u = torch.zeros((), dtype=torch.float64)  # f(z | 0, w)
        f_c = torch.zeros(2, dtype=torch.float64)  # f(z | x' = x_k, w)
        for _ in range(2000):
            # m = 0 rows: target v with a zero SC input -> E over the data
            grad_u = f_u - (probs * v_of).sum()
            # m = 1 rows, x' = x_k: target v_k + (1 - 1/w)(v_c - v_u), stop-gradient
            tgt = torch.stack(
                [sc_cfg_target(v_of[k : k + 1], f_c[k : k + 1], f_u.view(1), w)[0] for k in range(2)]
            )
            grad_c = f_c - tgt
            f_u = f_u - 0.2 * grad_u
            f_c = f_c - 0.2 * grad_c
        expected = w_val * v_of + (1 - w_val) * e_v  # w E[v | x'] + (1 - w) E[v | empty]
        assert math.isclose(float(f_u), e_v, abs_tol=1e-9)
        assert torch.allclose(f_c, expected, atol=1e-9), (w_val, f_c, expected)
    # by hand for w = 3: x' = +1 -> 3*1.2 - 2*(-1.8) = 7.2 ; x' = -1 -> 3*(-2.8) + 3.6 = -4.8
    assert torch.allclose(3 * v_of + (1 - 3) * e_v, torch.tensor([7.2, -4.8], dtype=torch.float64))


# --- dtypes, devices and the generator ------------------------------------------------------
def test_a_0d_time_is_a_scalar_time():
    """A 0-d tensor time broadcasts as a scalar (only ``(B,)`` times are reshaped to
    ``(B, 1, 1)``): the denominator stays 0-d and equals that of the float time."""
    path = FlowPath()
    like = torch.zeros(2, 3, 4)
    d = path.denom(torch.tensor(0.3, dtype=torch.float64), like)
    assert d.shape == () and float(d) == pytest.approx(path.denom(0.3, like))
    assert path.denom(torch.tensor(0.99), like).shape == ()  # clamped to t_eps, still 0-d
    assert float(path.denom(torch.tensor(0.99), like)) == pytest.approx(0.05)


def test_float64_times_keep_float32_latents_float32():
    """Per-row times are cast to the latents' dtype: float64 times (a float64 grid) on
    float32 latents give float32 z and v, equal to the float32 computation."""
    path = FlowPath()
    x, eps, t = _xzt()
    x, eps = x.float(), eps.float()
    s = path.sample(x, eps, t)  # t is float64
    assert s.z.dtype == torch.float32 and s.v.dtype == torch.float32
    ref = path.sample(x, eps, t.float())
    assert torch.equal(s.z, ref.z) and torch.equal(s.v, ref.v)


def test_churn_clips_alpha_to_one_from_above():
    """``alpha = clip(1 - gamma (t' - t), 0, 1)`` (``_sde_step``): a step back in time
    (t' < t) or a negative gamma would give alpha > 1; clipped, the churn is the identity
    (z_b = z, t_b = t), as at gamma = 0."""
    path = FlowPath(noise_scale=2.0)
    z = torch.ones(1, 1, 1, dtype=torch.float64)
    e = torch.full_like(z, -0.25)
    for t, t_next, gamma in [(0.6, 0.4, 1.5), (0.4, 0.6, -1.5)]:  # 1 - gamma (t' - t) = 1.3
        z_b, t_b = path.churn(z, t, t_next, gamma, e)
        assert t_b == t and torch.equal(z_b, z)


def _float32_representable(x: torch.Tensor) -> torch.Tensor:
    return x.float().double() == x


def test_normals_are_float64_draws_when_float64_is_asked():
    """``_normal`` in float64, with or without a generator: a float32 draw widened to
    float64 would be exactly float32-representable, a float64 draw almost never is."""
    from dlmbench_elf.path import _normal

    for g in (None, torch.Generator().manual_seed(0)):
        n = _normal((512,), g, "cpu", torch.float64)
        assert n.dtype == torch.float64
        assert float(_float32_representable(n).double().mean()) < 0.01


def test_logit_normal_in_float64_has_float64_resolution():
    """Without a generator the normals are drawn in the requested dtype: float64 times are
    not float32 values widened."""
    t = LogitNormal(-1.5, 0.8).sample((512,), None, "cpu", torch.float64)
    assert t.dtype == torch.float64
    assert float(_float32_representable(t).double().mean()) < 0.01


def test_logit_normal_with_a_generator_rounds_the_float64_sample_once():
    """With a generator the work is in float64 whatever dtype is asked (the same times on
    every device and dtype), so a float32 sample is the float64 sample rounded once; a
    float32 sigmoid of float32 normals is off by an ulp on many of these 4096."""
    d = LogitNormal(-1.5, 0.8)
    t32 = d.sample((4096,), torch.Generator().manual_seed(3), "cpu", torch.float32)
    t64 = d.sample((4096,), torch.Generator().manual_seed(3), "cpu", torch.float64)
    assert t32.dtype == torch.float32 and t64.dtype == torch.float64
    assert torch.equal(t32, t64.float())


def test_logit_normal_without_a_generator_is_the_global_float32_draw():
    """Training draws its times from torch's global RNG in float32, like the reference's
    ``torch.randn``: reseeding reproduces them as ``sigmoid(mean + std N)`` of float32 normals."""
    d = LogitNormal(-1.5, 0.8)
    torch.manual_seed(7)
    t = d.sample((4096,))
    torch.manual_seed(7)
    n = torch.randn(4096)
    assert t.dtype == torch.float32
    assert torch.equal(t, torch.sigmoid(n * 0.8 - 1.5))


def _uniforms_of(w: torch.Tensor, lo: float = 0.5, hi: float = 5.0) -> torch.Tensor:
    """Inverts ``w = a (b / a)^u - 1`` (a = 1 + lo, b = 1 + hi) for the uniform u."""
    return (torch.log1p(w.double()) - math.log1p(lo)) / math.log((1 + hi) / (1 + lo))


@pytest.mark.parametrize("seeded", [False, True])
def test_guidance_scales_in_float64_come_from_float64_uniforms(seeded):
    """Torch's float32 uniforms are multiples of 2^-24; the uniforms behind float64 scales
    (recovered by inverting the log-uniform map, to about 1e-15) almost never are."""
    g = torch.Generator().manual_seed(0) if seeded else None
    w = LogUniformScale().sample(2048, g, "cpu", torch.float64)
    assert w.dtype == torch.float64
    k = _uniforms_of(w) * 2**24
    off_grid = (k - k.round()).abs() > 1e-4
    assert float(off_grid.double().mean()) > 0.9


def test_guidance_scales_follow_the_generator_in_the_requested_dtype():
    """A seeded generator fixes the scales whatever the global RNG does; float32 is the
    default dtype."""
    torch.manual_seed(0)
    a = LogUniformScale().sample(64, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = LogUniformScale().sample(64, torch.Generator().manual_seed(5))
    assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("seeded", [False, True])
def test_draws_land_on_the_requested_device(seeded):
    """The meta device stands in for an accelerator on the CPU suite (it accepts a CPU
    generator): every draw must end on the device asked for."""
    from dlmbench_elf.path import _normal

    g = (lambda: torch.Generator().manual_seed(0)) if seeded else (lambda: None)
    assert _normal((2, 3), g(), "meta", torch.float32).device.type == "meta"
    assert LogitNormal(-1.5, 0.8).sample((5,), g(), "meta").device.type == "meta"
    assert LogUniformScale().sample(5, g(), "meta").device.type == "meta"


def test_time_grid_defaults_to_the_training_time_distribution():
    """The default logit-normal grid draws from the training t distribution (-1.5, 0.8) of
    every ``src/configs/training_configs/*.yml`` of lillian039/ELF@b29d883."""
    grid = time_grid(6, "logit-normal", torch.Generator().manual_seed(2))
    same = time_grid(6, "logit-normal", torch.Generator().manual_seed(2), -1.5, 0.8)
    assert torch.equal(grid, same)
    assert not torch.equal(grid, time_grid(6, "logit-normal", torch.Generator().manual_seed(2), -1.5, 1.8))


@pytest.mark.parametrize("seeded", [False, True])
def test_time_grid_has_float64_resolution(seeded):
    """The inner times are float64 draws, not float32 values widened to float64."""
    g = torch.Generator().manual_seed(0) if seeded else None
    grid = time_grid(513, "logit-normal", g)
    inner = grid[1:-1]
    assert grid.dtype == torch.float64
    assert float(_float32_representable(inner).double().mean()) < 0.01


def test_time_grid_errors_name_the_problem():
    with pytest.raises(ValueError, match="ELF needs steps >= 1, got 0"):
        time_grid(0, "uniform", None)
    with pytest.raises(ValueError, match="unknown ELF time grid 'cosine'"):
        time_grid(4, "cosine", None)
