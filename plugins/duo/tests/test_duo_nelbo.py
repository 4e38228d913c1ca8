"""Duo's Rao-Blackwellised NELBO (Duo paper Eq. 17).

Checked against the plain uniform-state bound: the sum over a fine time grid of
``E_{z_t} KL(q(z_s | z_t, x) || p_theta(z_s | z_t))`` (enumerated exactly on a 3-token
vocabulary) converges to the time integral of ``E_{z_t}`` of the RB integrand. Then the
model's Monte Carlo ``nelbo`` is checked against that exact integral.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlmbench.data import Batch, DataSpec
from dlmbench.testing.devices import on_meta_default
from dlmbench.testing.times import FixedTimes
from dlmbench_duo import Duo, DuoConfig, rb_nelbo_per_token, uniform_posterior

EPS = 1e-3
K = 3
SPEC = DataSpec(vocab_size=K, seq_len=6, pad_id=0, bos_id=0, eos_id=0, mask_id=0)
G = torch.Generator().manual_seed(0)
W = torch.randn(K, K, generator=G, dtype=torch.float64)
V = torch.randn(K, K, generator=G, dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")


def x_theta(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An arbitrary smooth denoiser of (z_t, t): softmax(W[z] + t V[z])."""
    return torch.softmax(W[z] + t[..., None] * V[z], -1)


def alpha(t):
    return 1 - (1 - EPS) * t


def rb_integral(x: int, lo: float, hi: float, n: int = 20000) -> float:
    """int_lo^hi E_{z_t ~ q(.|x)} f_RB(z_t, t) dt by the midpoint rule, z_t enumerated."""
    t = lo + (torch.arange(n, dtype=torch.float64) + 0.5) * (hi - lo) / n
    T, Z = t[:, None].expand(-1, K), torch.arange(K)[None].expand(n, -1)
    A = alpha(T)
    f = rb_nelbo_per_token(x_theta(Z, T).log(), Z, torch.full_like(Z, x), A, torch.full_like(A, -(1 - EPS)))
    q = (1 - A) / K + A * (Z == x)
    return float((f * q).sum() * (hi - lo) / n)


def kl_sum(x: int, lo: float, hi: float, steps: int) -> float:
    """sum_i E_{z_t} KL(q(z_s | z_t, x) || q(z_s | z_t, x_theta)) on linspace(hi, lo, steps + 1)."""
    grid = torch.linspace(hi, lo, steps + 1, dtype=torch.float64)
    t, s = grid[:-1], grid[1:]
    T, Z = t[:, None].expand(-1, K), torch.arange(K)[None].expand(steps, -1)
    At, As = alpha(T)[..., None], alpha(s)[:, None, None].expand(-1, K, 1)
    onehot = nn.functional.one_hot(torch.full_like(Z, x), K).double()
    q = uniform_posterior(onehot, Z, At, As)
    p = uniform_posterior(x_theta(Z, T), Z, At, As)
    kl = (q * (q.clamp_min(1e-300).log() - p.log())).sum(-1)
    marg = (1 - alpha(T)) / K + alpha(T) * (Z == x)
    return float((kl * marg).sum())


def test_rb_integrand_equals_the_sum_of_kls_in_the_continuous_limit():
    for x in range(K):
        exact = rb_integral(x, EPS, 1.0)
        coarse, fine = kl_sum(x, EPS, 1.0, 2000), kl_sum(x, EPS, 1.0, 16000)
        assert abs(fine - exact) < abs(coarse - exact) + 1e-12  # converges ...
        assert abs(fine - exact) < 1e-3 * exact  # ... to the RB integral


def test_rb_integrand_is_nonnegative_and_zero_for_the_perfect_denoiser():
    g = torch.Generator().manual_seed(3)
    Kv = 11
    x0 = torch.randint(0, Kv, (4, 50), generator=g)
    xt = torch.where(torch.rand(4, 50, generator=g) < 0.5, x0, torch.randint(0, Kv, (4, 50), generator=g))
    a = torch.rand(4, 1, generator=g, dtype=torch.float64) * 0.98 + 0.01
    da = torch.full_like(a, -(1 - EPS))
    log_x = torch.log_softmax(torch.randn(4, 50, Kv, generator=g, dtype=torch.float64) * 3, -1)
    assert float(rb_nelbo_per_token(log_x, xt, x0, a, da).min()) >= -1e-9
    perfect = nn.functional.one_hot(x0, Kv).double().clamp_min(1e-300).log()
    torch.testing.assert_close(rb_nelbo_per_token(perfect, xt, x0, a, da), torch.zeros(4, 50, dtype=torch.float64))


class TimeDenoiser(nn.Module):
    """``x_theta = softmax(W[z] + t V[z])`` with t recovered from sigma = -log alpha_t."""

    def forward(self, x, sigma):
        t = (1 - torch.exp(-sigma.double())) / (1 - EPS)
        return x_theta(x, t[:, None].expand_as(x)).log().float()


def test_model_nelbo_is_unbiased_for_the_exact_bound():
    """The Monte Carlo ``nelbo`` averages to the exact integral within 4 standard errors,
    and a value 5% off is rejected by the same test. The standard error comes from the
    means of independent batches, since ``t`` is stratified within a batch; 4 is beyond the
    two-sided 1e-3 quantile of Student's t with ``batches - 1 = 49`` degrees of freedom
    (3.50). The integrand is heavy-tailed near ``t = eps`` (about ``1/t`` where ``z != x``),
    so it takes 400k sequences to put 5% of the bound 8 or more standard errors away (the
    standard error itself varies by about 20% between seeds)."""
    spec = DataSpec(vocab_size=K, seq_len=4, pad_id=0, bos_id=0, eos_id=0, mask_id=0)
    model = Duo(DuoConfig.from_preset("tiny"), spec)
    model.backbone = TimeDenoiser()
    model.eval()
    per_class = torch.tensor([rb_integral(x, EPS, 1.0) / (1 - EPS) for x in range(K)])  # t ~ U[eps, 1]
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, K, (8000, 4), generator=g)
    expected = per_class[x0].sum(-1)
    torch.manual_seed(5)
    batches = torch.stack([(model.nelbo(Batch(x0)).double() - expected).mean() for _ in range(50)])
    diff, se = float(batches.mean()), float(batches.std() / len(batches) ** 0.5)
    bound = float(expected.mean())
    assert abs(diff) < 4 * se, (diff, se, bound)
    assert abs(diff - 0.05 * bound) > 4 * se and abs(diff + 0.05 * bound) > 4 * se, (diff, se, bound)


def test_loss_is_the_mean_over_scored_positions_and_prefix_is_clean():
    spec = DataSpec(vocab_size=K, seq_len=6, pad_id=0, bos_id=0, eos_id=0, mask_id=0, prefix_len=2)

    class Recorder(TimeDenoiser):
        inputs: list = []

        def forward(self, x, sigma):
            Recorder.inputs.append(x.clone())
            return super().forward(x, sigma)

    model = Duo(DuoConfig.from_preset("tiny"), spec)
    model.backbone = Recorder()
    x0 = torch.randint(0, K, (500, 6))
    torch.manual_seed(0)
    per_token, scored = model._exact_terms(Batch(x0))
    xt = Recorder.inputs[-1]
    assert torch.equal(xt[:, :2], x0[:, :2]) and not torch.equal(xt[:, 2:], x0[:, 2:])
    assert not bool(scored[:, :2].any()) and float(per_token[:, :2].abs().sum()) == 0
    torch.manual_seed(0)
    torch.testing.assert_close(model.loss(Batch(x0)), per_token.sum() / scored.sum())


def test_rb_integrand_keeps_the_dtype_of_the_log_probs():
    """alpha_t and its derivative are cast to the dtype of the log-probabilities first: float64
    times with float32 log-probs give float32 terms, the same as float32 times would."""
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(0, 5, (2, 7), generator=g)
    xt = torch.where(torch.rand(2, 7, generator=g) < 0.5, x0, torch.randint(0, 5, (2, 7), generator=g))
    log_x = torch.log_softmax(torch.randn(2, 7, 5, generator=g), -1)
    a = torch.rand(2, 1, generator=g, dtype=torch.float64) * 0.98 + 0.01
    da = torch.full_like(a, -(1 - EPS))
    out = rb_nelbo_per_token(log_x, xt, x0, a, da)
    assert out.dtype == torch.float32
    assert torch.equal(out, rb_nelbo_per_token(log_x, xt, x0, a.float(), da.float()))


class InputRecorder(TimeDenoiser):
    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, sigma):
        self.inputs.append(x.clone())
        return super().forward(x, sigma)


def test_a_token_is_resampled_iff_its_draw_is_below_one_minus_alpha():
    """The forward process resamples position l iff u_l < 1 - alpha_t (u: the ``torch.rand``
    draw, then ``torch.randint`` gives the new token), which has probability exactly
    1 - alpha_t on the float32 grid of u (``<=`` would add 2^-24). With eps = 0,
    1 - alpha_t = t exactly for t on that grid; with t = u_0 per row, position 0 keeps its
    token and z_t is the independently rebuilt where(u < u_0, new, x)."""
    model = Duo(DuoConfig.from_preset("tiny", noise_eps=0.0), SPEC)
    model.backbone = InputRecorder()
    torch.manual_seed(7)
    u, new = torch.rand(64, 6), torch.randint(0, K, (64, 6))  # the draws, in _exact_terms' order
    assert bool((u[:, 0] > 0).all())
    x0 = (new + 1) % K  # every resampled position changes
    model.time_dist = FixedTimes(u[:, 0])
    torch.manual_seed(7)
    model._exact_terms(Batch(x0))
    assert torch.equal(model.backbone.inputs[-1], torch.where(u < u[:, :1], new, x0))


def test_loss_of_a_single_scored_position_is_its_term():
    """One scored position: the loss is its RB term divided by one position."""
    model = Duo(DuoConfig.from_preset("tiny"), SPEC)
    model.backbone = TimeDenoiser()
    x0 = torch.randint(0, K, (8, 6), generator=torch.Generator().manual_seed(8))
    one = torch.zeros_like(x0, dtype=torch.bool)
    one[5, 3] = True
    torch.manual_seed(9)
    per_token, scored = model._exact_terms(Batch(x0, one))
    assert int(scored.sum()) == 1 and float(per_token[5, 3]) > 0
    torch.manual_seed(9)
    torch.testing.assert_close(model.loss(Batch(x0, one)), per_token[5, 3], rtol=0, atol=0)


def test_every_tensor_of_the_exact_loss_is_made_on_the_data_device():
    """The meta device stands in for an accelerator on the CPU suite: with torch's default
    device set to meta, CPU data still gives the CPU result, so the times and the
    resampling draws are all made on the data's device, none on the default one."""
    model = Duo(DuoConfig.from_preset("tiny"), SPEC)
    model.backbone = TimeDenoiser()
    x0 = torch.randint(0, K, (8, 6), generator=torch.Generator().manual_seed(10))
    (expected, _), (per_token, _) = on_meta_default(lambda: model._exact_terms(Batch(x0)), seed=11)
    assert per_token.device.type == "cpu" and torch.equal(per_token, expected)


def test_without_time_conditioning_sigma_is_float32_zeros():
    """time_conditioning=False feeds sigma = 0 in float32 whatever the dtype of alpha."""
    model = Duo(DuoConfig.from_preset("tiny", time_conditioning=False), SPEC)
    alpha = torch.tensor([0.25, 0.5, 0.9], dtype=torch.float64)
    assert torch.equal(model.conditioning_from_alpha(alpha), torch.zeros(3, dtype=torch.float32))
    assert model.conditioning_from_alpha(alpha).dtype == torch.float32
    assert torch.equal(model.conditioning(alpha), torch.zeros(3, dtype=torch.float32))


def test_two_tokens_are_the_smallest_vocabulary():
    """Uniform-state diffusion needs a second token to move to: K = 2 builds, K = 1 is refused."""
    from dlmbench.errors import ConfigError

    two = DataSpec(vocab_size=2, seq_len=4, pad_id=0, bos_id=0, eos_id=0, mask_id=0)
    assert Duo(DuoConfig.from_preset("tiny"), two).spec.vocab_size == 2
    one = DataSpec(vocab_size=1, seq_len=4, pad_id=0, bos_id=0, eos_id=0, mask_id=0)
    with pytest.raises(ConfigError, match=r"^duo needs a vocabulary of at least 2 tokens$"):
        Duo(DuoConfig.from_preset("tiny"), one)


@pytest.mark.parametrize("antithetic", [True, False])
def test_training_times_follow_the_antithetic_option(antithetic):
    """``antithetic_sampling: false`` must reach the time sampler: stratified and plain
    draws from the same generator differ, so a dropped option shows."""
    from dlmbench.schedule import StratifiedUniform

    cfg = DuoConfig.from_preset("tiny", antithetic_sampling=antithetic)
    model = Duo(cfg, SPEC)
    drawn = model.time_dist.sample(16, generator=torch.Generator().manual_seed(0))
    expected = StratifiedUniform(cfg.sampling_eps, antithetic).sample(16, generator=torch.Generator().manual_seed(0))
    other = StratifiedUniform(cfg.sampling_eps, not antithetic).sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, expected) and not torch.allclose(drawn, other)


def test_the_trained_step_counter_is_an_exact_integer_in_the_checkpoint():
    """The curriculum reads the step counter: saved as a float it would stop counting
    exactly past 2^24 steps, so it must be an integer buffer of the state dict."""
    model = Duo(DuoConfig.from_preset("tiny"), SPEC)
    assert model.state_dict()["steps_trained"].dtype == torch.long
