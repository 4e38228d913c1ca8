"""Duo's Gaussian-guided curriculum (Duo paper Sec. 3 and 5.1; ``s-sahoo/duo@7c9b498 algo.py``, ``DUO.nll``)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from dlmbench.data import Batch, DataSpec
from dlmbench.errors import ConfigError
from dlmbench.testing.devices import on_meta_default
from dlmbench.testing.times import FixedTimes
from dlmbench.training import fit
from dlmbench_duo import Duo, DuoConfig, duality_alpha_exact, duality_table

SPEC = DataSpec(vocab_size=12, seq_len=8, pad_id=0, bos_id=2, eos_id=3, mask_id=4)


class Recorder(nn.Module):
    """Uniform logits (of the input's batch/length); keeps every input and sigma."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, sigma):
        self.calls.append((x.detach().clone(), sigma.detach().clone()))
        B, L = x.shape[:2]
        return self.scale * torch.zeros(B, L, self.vocab_size, device=x.device)


def recorded(spec: DataSpec = SPEC, **options) -> Duo:
    model = Duo(DuoConfig.from_preset("tiny", **options), spec)
    model.backbone = Recorder(spec.vocab_size)
    return model


def tokens(spec: DataSpec = SPEC, rows: int = 16) -> torch.Tensor:
    return torch.randint(5, spec.vocab_size, (rows, spec.seq_len), generator=torch.Generator().manual_seed(0))


def test_first_steps_use_soft_inputs_then_the_exact_loss():
    model = recorded(curriculum_steps=3).train()
    for _ in range(5):
        model.loss(Batch(tokens())).backward()
    dims = [x.dim() for x, _ in model.backbone.calls]
    assert dims == [3, 3, 3, 2, 2]
    assert int(model.steps_trained) == 5


def test_curriculum_is_never_used_for_the_bound_or_in_eval_mode():
    model = recorded(curriculum_steps=100)
    model.eval()
    model.loss(Batch(tokens()))
    model.train()
    with torch.no_grad():
        model.nelbo(Batch(tokens()))
    assert [x.dim() for x, _ in model.backbone.calls] == [2, 2]
    assert int(model.steps_trained) == 0


def test_soft_input_is_a_tempered_gaussian_latent_with_duality_conditioning():
    spec = DataSpec(vocab_size=12, seq_len=8, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=2)
    model = recorded(spec, curriculum_steps=1).train()
    x0 = tokens(spec, rows=64)
    model.loss(Batch(x0))
    soft, sigma = model.backbone.calls[0]
    assert soft.shape == (64, 8, 12) and soft.dtype == torch.float32
    probs = torch.softmax(soft, -1)
    # tau = 1e-3 makes the soft input nearly one-hot on argmax(w)
    assert float(probs.max(-1).values.mean()) > 0.95
    # the prefix is clean: exactly one-hot on the data
    assert torch.equal(probs[:, :2].argmax(-1), x0[:, :2]) and float(probs[:, :2].max(-1).values.min()) == 1.0
    # sigma = -log T(alpha~) with gamma in [-3.55, -1.85]: alpha_t in [0.049, 0.946] for K = 12
    table = duality_table(12, -5.0, -1.0)
    window = table.alpha(torch.tensor([-1.85, -3.55], dtype=torch.float64))
    alpha = torch.exp(-sigma.double())
    assert float(alpha.min()) >= float(window[0]) - 1e-4 and float(alpha.max()) <= float(window[1]) + 1e-4
    # the targets z_t = argmax(w) agree with x0 at about the rate alpha + (1 - alpha) / K
    zt = soft[:, 2:].argmax(-1)
    agree = (zt == x0[:, 2:]).double().mean(-1)
    expected = alpha + (1 - alpha) / 12
    assert abs(float((agree - expected).mean())) < 0.05


def test_curriculum_fraction_follows_fit():
    model = recorded(curriculum_fraction=0.5, ema_decay=0.0, warmup_steps=0)
    fit(model, tokens(rows=64), batch_size=8, steps=6)
    assert [x.dim() for x, _ in model.backbone.calls] == [3, 3, 3, 2, 2, 2]
    lonely = recorded(curriculum_fraction=0.5).train()
    with pytest.raises(ConfigError, match=r"^duo: curriculum_fraction needs the number of training steps; train with "
                       r"dlmbench\.training\.fit \(or call model\.on_fit_start\(steps\)\), or set curriculum_steps$"):
        lonely.loss(Batch(tokens()))


def test_curriculum_terms_are_zero_off_the_scored_positions():
    """Only scored positions carry a term (here: the target narrowed by a loss mask); the data
    need not use the last token of the vocabulary (the one-hot is K wide, not max + 1)."""
    spec = DataSpec(vocab_size=12, seq_len=8, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=2)
    model = recorded(spec, curriculum_steps=1).train()
    x0 = torch.randint(5, 10, (16, 8), generator=torch.Generator().manual_seed(1))  # no token 10 or 11
    loss_mask = torch.zeros_like(x0, dtype=torch.bool)
    loss_mask[:, 3:6] = True
    per_token, scored = model._curriculum_terms(Batch(x0, loss_mask))
    assert per_token.shape == (16, 8) and torch.equal(scored, loss_mask)
    assert bool((per_token[scored] != 0).all())  # the uniform stand-in is no perfect denoiser
    assert torch.equal(per_token[~scored], torch.zeros(int((~scored).sum())))


def test_every_tensor_of_the_curriculum_loss_is_made_on_the_data_device():
    """The meta device stands in for an accelerator on the CPU suite: with torch's default
    device set to meta, CPU data still gives the CPU result, so the times and the Gaussian
    latents are made on the data's device, none on the default one."""
    model = recorded(curriculum_steps=1).train()
    x0 = tokens(rows=4)
    (expected, _), (per_token, _) = on_meta_default(lambda: model._curriculum_terms(Batch(x0)), seed=2)
    assert per_token.device.type == "cpu" and torch.equal(per_token, expected)


def test_curriculum_settings_are_validated():
    with pytest.raises(ValidationError):
        DuoConfig(curriculum_steps=10, curriculum_fraction=0.5)
    with pytest.raises(ValidationError):
        DuoConfig(gamma_min=-1.0, gamma_max=-2.0)


def test_curriculum_loss_with_the_real_network_is_finite_and_backpropagates():
    torch.manual_seed(0)
    model = Duo(DuoConfig.from_preset("tiny", curriculum_steps=10), SPEC).train()
    with torch.no_grad():  # off the zero initialisation, so gradients reach the embedding
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    loss = model.loss(Batch(tokens()))
    assert bool(torch.isfinite(loss)) and float(loss.detach()) > 0
    loss.backward()
    assert float(model.network.output_layer.linear.weight.grad.abs().sum()) > 0
    assert float(model.network.vocab_embed.embedding.grad.abs().sum()) > 0


def test_window_ends_read_the_duality_at_gamma_min_and_gamma_max_even_above_minus_one():
    """t = 0 and t = 1 condition on T(alpha~) at gamma_min and gamma_max (Duo paper Sec. 3),
    also for a window reaching past the standard [-5, -1] table, which then must extend to
    gamma_max plus the forward-difference step. Catches a table that stops at -1 or short of
    gamma_max + 1e-3 (the look-up raises)."""
    K = 12
    model = recorded(curriculum_steps=1, gamma_min=-2.0, gamma_max=-0.5).train()
    model.time_dist = FixedTimes([0.0, 1.0])
    model.loss(Batch(tokens(rows=2)))
    _, sigma = model.backbone.calls[0]
    exact = duality_alpha_exact(torch.tensor([-2.0, -0.5], dtype=torch.float64), K)
    torch.testing.assert_close(torch.exp(-sigma.double()), exact, rtol=1e-5, atol=1e-6)  # fp32 sigma


def test_windows_inside_the_standard_range_share_one_table():
    """Any window inside [-5, -1] reads the one standard table per vocabulary (as the code's
    pre-tabulated ``integral/gpt2.pkl`` covers [-5, -1]), rather than tabulating each window
    anew. Catches a table range that follows the window's own ends."""
    duality_table.cache_clear()
    for window in ((-3.55, -1.85), (-4.0, -2.0), (-5.0, -1.5)):
        model = recorded(curriculum_steps=1, gamma_min=window[0], gamma_max=window[1]).train()
        model.loss(Batch(tokens(rows=4)))
    assert duality_table.cache_info().misses == 1
