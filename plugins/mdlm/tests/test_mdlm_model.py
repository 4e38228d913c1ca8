"""MDLM closed forms: the 1/t weight, SUBS, the NELBO and prefix handling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlmbench.data import Batch, DataSpec
from dlmbench.schedule import LogLinearSchedule
from dlmbench.testing.devices import on_meta_default
from dlmbench.testing.times import FixedTimes
from dlmbench_mdlm import MDLM, MDLMConfig, subs_log_probs
from dlmbench_mdlm.model import NEG_INFINITY, continuous_weight, discrete_weight

EPS = 1e-3
SCHEDULE = LogLinearSchedule(EPS)
SPEC = DataSpec(vocab_size=8, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4)


class IndependentDenoiser(nn.Module):
    """Returns log ``pi`` at every position: the exact ``E[x | z_t]`` for independent tokens."""

    def __init__(self, probs: torch.Tensor, record: bool = False):
        super().__init__()
        self.register_buffer("logits", probs.clamp_min(1e-30).log())
        self.record = record
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, sigma):
        if self.record:
            self.inputs.append((x.clone(), sigma.clone()))
        return self.logits.expand(x.shape[0], -1, -1).clone()


def token_probs(spec: DataSpec, seed: int = 0) -> torch.Tensor:
    """Random per-position distributions over the ordinary (non-special) tokens."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(spec.seq_len, spec.vocab_size, generator=g) + 0.1
    probs[:, :5] = 0.0  # pad, unk, bos, eos, mask never occur
    return probs / probs.sum(-1, keepdim=True)


def stand_in_model(spec: DataSpec, probs: torch.Tensor, record: bool = False, **options) -> MDLM:
    model = MDLM(MDLMConfig.from_preset("tiny", **options), spec)
    model.backbone = IndependentDenoiser(probs, record)
    return model.eval()


def test_continuous_weight_is_one_over_t():
    t = torch.linspace(EPS, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(continuous_weight(SCHEDULE, t), 1 / t)
    # the code's form, dsigma / expm1(sigma)
    sigma = SCHEDULE(t).total_noise
    dsigma = (1 - EPS) / (1 - (1 - EPS) * t)
    torch.testing.assert_close(dsigma / torch.expm1(sigma), 1 / t)


def test_discrete_weight_is_one_over_t_on_the_grid():
    T = 10
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    torch.testing.assert_close(discrete_weight(SCHEDULE, t, T), 1 / t)


def test_subs_never_predicts_the_mask_and_keeps_unmasked_tokens():
    torch.manual_seed(0)
    mask_id = SPEC.mask_id
    logits = torch.randn(3, 6, SPEC.vocab_size) * 5
    logits[..., mask_id] = 50.0  # even a huge mask logit is suppressed
    xt = torch.randint(0, SPEC.vocab_size, (3, 6))
    xt[:, ::2] = mask_id
    log_p = subs_log_probs(logits, xt, mask_id)
    p = log_p.exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 6))
    assert float(p[..., mask_id].max()) == 0.0
    unmasked = xt != mask_id
    assert torch.equal(log_p[unmasked].argmax(-1), xt[unmasked])
    assert torch.equal(log_p[unmasked].gather(-1, xt[unmasked][:, None]).squeeze(-1), torch.zeros(int(unmasked.sum())))
    others = log_p[unmasked].scatter(-1, xt[unmasked][:, None], NEG_INFINITY)
    assert float(others.max()) == NEG_INFINITY


def test_subs_keeps_the_logits_dtype():
    """SUBS log-normalises in the logits' own dtype, as ``log_softmax`` does (the mask bias is
    built in that dtype). Catches a float32 bias, which silently promotes bf16 logits to fp32."""
    torch.manual_seed(0)
    mask_id = SPEC.mask_id
    logits = torch.randn(2, 5, SPEC.vocab_size).to(torch.bfloat16)
    xt = torch.randint(0, SPEC.vocab_size, (2, 5))
    xt[:, ::2] = mask_id
    log_p = subs_log_probs(logits, xt, mask_id)
    assert log_p.dtype == torch.bfloat16
    reference = subs_log_probs(logits.float(), xt, mask_id)
    torch.testing.assert_close(log_p.float().exp(), reference.exp(), rtol=0, atol=1e-2)  # bf16: 8-bit mantissa


@pytest.mark.parametrize("T", [0, 10])
def test_nelbo_matches_its_closed_form_in_expectation(T):
    """For x_theta = pi (independent tokens) E[nelbo] = (1 - eps) sum_l -log pi_l(x_l):
    the weight times the masking probability integrates to (1 - eps) over t ~ U[eps, 1].
    Within 4 standard errors, and a value 5% off is rejected by the same test. The
    standard error comes from the means of independent batches (``t`` is stratified within
    a batch); 4 is beyond the two-sided 1e-3 quantile of Student's t with 39 degrees of
    freedom (3.56). 40k sequences put 5% of the bound more than 10 standard errors away."""
    probs = token_probs(SPEC)
    model = stand_in_model(SPEC, probs, T=T)
    g = torch.Generator().manual_seed(1)
    x0 = torch.multinomial(probs, 1000, replacement=True, generator=g).T.contiguous()  # (1000, L)
    expected = (1 - EPS) * -probs.log().gather(1, x0.T).T.sum(-1)
    torch.manual_seed(2)
    batches = torch.stack([(model.nelbo(Batch(x0)) - expected).double().mean() for _ in range(40)])
    diff, se = float(batches.mean()), float(batches.std() / len(batches) ** 0.5)
    bound = float(expected.mean())
    assert abs(diff) < 4 * se, (diff, se, bound)
    assert abs(diff - 0.05 * bound) > 4 * se and abs(diff + 0.05 * bound) > 4 * se, (diff, se, bound)


def test_loss_averages_over_all_scored_positions():
    probs = token_probs(SPEC)
    model = stand_in_model(SPEC, probs)
    x0 = torch.multinomial(probs, 64, replacement=True).T.contiguous()
    torch.manual_seed(3)
    per_token, scored = model.token_losses(Batch(x0))
    torch.manual_seed(3)
    assert torch.allclose(model.loss(Batch(x0)), per_token.sum() / scored.sum())
    torch.manual_seed(3)
    assert torch.allclose(model.nelbo(Batch(x0)), per_token.sum(-1))


def test_prefix_is_never_masked_and_not_scored():
    spec = DataSpec(vocab_size=8, seq_len=6, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=3)
    probs = token_probs(spec)
    model = stand_in_model(spec, probs, record=True)
    x0 = torch.multinomial(probs, 256, replacement=True).T.contiguous()
    per_token, scored = model.token_losses(Batch(x0))
    xt, sigma = model.backbone.inputs[-1]
    assert torch.equal(xt[:, :3], x0[:, :3])
    assert bool((xt[:, 3:] == spec.mask_id).any())
    assert not bool(scored[:, :3].any()) and bool(scored[:, 3:].all())
    assert float(per_token[:, :3].abs().sum()) == 0.0
    # an explicit loss_mask narrows the scored positions further
    loss_mask = torch.zeros_like(x0, dtype=torch.bool)
    loss_mask[:, 4] = True
    per_token, scored = model.token_losses(Batch(x0, loss_mask))
    assert torch.equal(scored, loss_mask)
    assert float(per_token[:, [3, 5]].abs().sum()) == 0.0


def test_time_conditioning_off_zeroes_sigma():
    probs = token_probs(SPEC)
    x0 = torch.multinomial(probs, 8, replacement=True).T.contiguous()
    off = stand_in_model(SPEC, probs, record=True)
    off.loss(Batch(x0))
    assert torch.equal(off.backbone.inputs[-1][1], torch.zeros(8))
    on = stand_in_model(SPEC, probs, record=True, time_conditioning=True)
    on.loss(Batch(x0))
    assert float(on.backbone.inputs[-1][1].min()) > 0


def test_mask_token_in_the_data_is_refused():
    model = stand_in_model(SPEC, token_probs(SPEC))
    x0 = torch.full((2, 6), 5)
    x0[0, 1] = SPEC.mask_id
    with pytest.raises(ValueError, match=r"^mdlm: the data contains spec\.mask_id at a scored position$"):
        model.loss(Batch(x0))


@pytest.mark.parametrize("T,fixed", [(0, True), (1, False), (4, True)], ids=["continuous", "T=1", "T=4"])
def test_at_t_one_every_token_is_masked_with_weight_one(T, fixed):
    """With eps = 0, alpha_1 = 0: at t = 1 every target token is masked and both bounds weigh
    it by 1/t = 1, so the per-token term is -log pi_l(x_l) exactly (pi: the stand-in's
    distribution). T = 1 snaps every t to 1; a drawn t = 1 (float32 rounding of
    eps + (1 - eps) u) must stay on the grid's last point. With one scored position the
    loss is that position's term (divided by one position, not more)."""
    probs = token_probs(SPEC)
    model = stand_in_model(SPEC, probs, T=T, noise_eps=0.0)
    if fixed:
        model.time_dist = FixedTimes(torch.ones(16))
    x0 = torch.multinomial(probs, 16, replacement=True, generator=torch.Generator().manual_seed(0)).T.contiguous()
    expected = -probs.log().gather(1, x0.T).T  # (16, L)
    torch.manual_seed(0)
    per_token, scored = model.token_losses(Batch(x0))
    assert bool(scored.all())
    torch.testing.assert_close(per_token, expected, rtol=1e-5, atol=0)
    one = torch.zeros_like(x0, dtype=torch.bool)
    one[3, 2] = True
    torch.testing.assert_close(model.loss(Batch(x0, one)), expected[3, 2], rtol=1e-5, atol=0)


def test_a_draw_equal_to_the_masking_probability_leaves_the_token_clean():
    """Position l is masked iff u_l < 1 - alpha_t (u: the ``torch.rand`` draw), which masks with
    probability exactly 1 - alpha_t on the float32 grid of u (``<=`` would add 2^-24). With
    eps = 0, 1 - alpha_t = t exactly for t on that grid; taking t = u_0 per row, position 0
    is clean and exactly the positions with u_l < u_0 carry a loss."""
    probs = token_probs(SPEC)
    model = stand_in_model(SPEC, probs, noise_eps=0.0)
    x0 = torch.multinomial(probs, 32, replacement=True, generator=torch.Generator().manual_seed(0)).T.contiguous()
    torch.manual_seed(4)
    u = torch.rand(x0.shape)  # the only draw token_losses makes once t is fixed
    assert bool((u[:, 0] > 0).all())
    model.time_dist = FixedTimes(u[:, 0])
    torch.manual_seed(4)
    per_token, _ = model.token_losses(Batch(x0))
    assert torch.equal(per_token != 0, u < u[:, :1])


@pytest.mark.parametrize("T", [0, 10])
def test_every_tensor_of_the_loss_is_made_on_the_data_device(T):
    """The meta device stands in for an accelerator on the CPU suite: with torch's default
    device set to meta, CPU data still gives the CPU result, so the times, the masking draws
    and the mask bias are all made on the data's device, none on the default one."""
    probs = token_probs(SPEC)
    model = stand_in_model(SPEC, probs, T=T)
    x0 = torch.multinomial(probs, 8, replacement=True, generator=torch.Generator().manual_seed(0)).T.contiguous()
    (expected, _), (per_token, _) = on_meta_default(lambda: model.token_losses(Batch(x0)), seed=5)
    assert per_token.device.type == "cpu" and torch.equal(per_token, expected)


def test_real_network_loss_is_finite_and_backpropagates():
    torch.manual_seed(0)
    model = MDLM(MDLMConfig.from_preset("tiny"), SPEC).train()
    x0 = torch.randint(5, 8, (4, 6))
    loss = model.loss(Batch(x0))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.output_layer.linear.weight.grad.abs().sum() > 0
    bound = model.nelbo(Batch(x0))
    assert bound.shape == (4,) and bool((bound >= 0).all())


@pytest.mark.parametrize("mask_id, ok", [(0, True), (7, True), (8, False), (-1, False)])
def test_the_mask_token_must_be_a_vocabulary_id(mask_id, ok):
    """Ids 0 .. K-1 are the vocabulary (0 and K-1 included); K and beyond are refused by name."""
    from dlmbench.errors import ConfigError

    spec = DataSpec(vocab_size=8, seq_len=6, pad_id=1, bos_id=2, eos_id=3, mask_id=mask_id)
    if ok:
        assert MDLM(MDLMConfig.from_preset("tiny"), spec).spec.mask_id == mask_id
    else:
        with pytest.raises(ConfigError, match=rf"^mdlm needs spec.mask_id inside the vocabulary, got {mask_id}$"):
            MDLM(MDLMConfig.from_preset("tiny"), spec)


@pytest.mark.parametrize("antithetic", [True, False])
def test_training_times_follow_the_antithetic_option(antithetic):
    """``antithetic_sampling: false`` reaches the time sampler: stratified and plain draws
    from the same generator differ."""
    from dlmbench.schedule import StratifiedUniform

    cfg = MDLMConfig.from_preset("tiny", antithetic_sampling=antithetic)
    model = MDLM(cfg, SPEC)

    def draw(dist):
        return dist.sample(16, generator=torch.Generator().manual_seed(0))

    drawn = draw(model.time_dist)
    assert torch.equal(drawn, draw(StratifiedUniform(cfg.sampling_eps, antithetic)))
    assert not torch.allclose(drawn, draw(StratifiedUniform(cfg.sampling_eps, not antithetic)))


def test_without_time_conditioning_sigma_is_float32_zeros_for_float64_times():
    """The network's sigma is float32 whatever the times' dtype (the sampler's are float64)."""
    model = MDLM(MDLMConfig.from_preset("tiny", time_conditioning=False), SPEC)
    sigma = model.conditioning(torch.full((3,), 0.5, dtype=torch.float64))
    assert sigma.dtype == torch.float32 and torch.equal(sigma, torch.zeros(3))
