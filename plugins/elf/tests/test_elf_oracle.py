"""Oracle-denoiser tests: the samplers with the exact posterior mean reach the data.

Data: every position holds one of K embedding points e_k (token 5 + k) with
probabilities pi_k, independently, plus optional Gaussian jitter sigma_d. On the path
z_t = t x + (1 - t) s_n eps the posterior is exact per position:

    z_t | k ~ N(t e_k, (t^2 sigma_d^2 + (1-t)^2 s_n^2) I)
    E[x | z_t] = sum_k r_k(z_t) (e_k + t sigma_d^2 / var_t (z_t - t e_k))

The oracle replaces the network (``model.denoiser``) by this E[x | z_t]; ELF's own
``predict`` turns it into a velocity. The exact posterior mean has no use for the
self-conditioning channel or the SC-CFG scale w, so the oracle records them instead, and
every test checks that the sampler fed them as it must (zeros, then the previous step's
x-prediction; the configured w). Its hidden state is z itself, read by ELF's real decode
head (:class:`~dlmbench_elf.denoiser.DecodeHead`) with weights set to the nearest-point rule,
and the decode pass is checked to get the final z at t = 1 in decode mode with a zero
channel (``_dlm_decode_batch`` in ``src/utils/generation_utils.py`` of lillian039/ELF@b29d883).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import nn

from dlmbench.data import DataSpec, SampleRequest
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.denoiser import DecodeHead, DenoiserOutput
from dlmbench_elf.model import ELF
from dlmbench_elf.samplers import ODESampler, SDESampler

pytestmark = pytest.mark.usefixtures("one_thread")

K, D, FIRST = 4, 16, 5
PROBS = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
W = 2.0  # the SC-CFG scale the samplers are configured with (not the default 1 of the ODE)
SHIFT = 20.0  # the decode head's pre-GELU shift: GELU_tanh(u) == u in float64 for u >= 10


def nearest_point_head(points: torch.Tensor) -> DecodeHead:
    """ELF's decode head, in float64, computing argmin_k ||h - e_k||.

    proj = identity + SHIFT puts every input of the GELU above 10 (|h| < 10 here), where
    the tanh form is the identity; unembed then gives 2 e_k . h - ||e_k||^2 (the shift
    removed by the bias), which orders ids as -||h - e_k||^2 does; special ids get -1e4.
    """
    head = DecodeHead(hidden=D, d_latent=D, vocab_size=FIRST + K).double()
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(D, dtype=torch.float64))
        head.proj.bias.fill_(SHIFT)
        head.unembed.weight.zero_()
        head.unembed.bias.fill_(-1e4)
        head.unembed.weight[FIRST:] = 2 * points
        head.unembed.bias[FIRST:] = -points.pow(2).sum(-1) - 2 * SHIFT * points.sum(-1)
    return head


class Call(NamedTuple):
    z: torch.Tensor
    sc: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    mode: torch.Tensor | None
    x: torch.Tensor  # what the oracle returned (float32, as the network's output is)


class OracleNet(nn.Module):
    """E[x | z_t] as the network: records its inputs, returns the posterior mean and z as hidden."""

    def __init__(self, points: torch.Tensor, sigma_d: float, noise_scale: float):
        super().__init__()
        self.in_proj = nn.Linear(1, 1)  # ELF reads its dtype and device off this weight
        self.decode_head = nearest_point_head(points)
        self.register_buffer("points", points)
        self.sigma_d, self.noise_scale = sigma_d, noise_scale
        self.calls: list[Call] = []

    def posterior_mean(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = z.double()
        tb = t.double().view(-1, 1, 1, 1)
        var = (tb * self.sigma_d) ** 2 + ((1 - tb) * self.noise_scale) ** 2  # (B, 1, 1, 1)
        diff = z[:, :, None, :] - tb * self.points  # (B, L, K, D)
        logits = PROBS.log() - diff.pow(2).sum(-1) / (2 * var[..., 0])
        r = logits.softmax(-1)  # (B, L, K)
        cond_mean = self.points + (tb * self.sigma_d**2 / var) * diff  # (B, L, K, D)
        return (r[..., None] * cond_mean).sum(-2)

    def forward(self, z, sc, t, w, mode=None) -> DenoiserOutput:
        x = self.posterior_mean(z, t).float()
        self.calls.append(Call(z.clone(), sc.clone(), t.clone(), w.clone(), None if mode is None else mode.clone(), x))
        return DenoiserOutput(x, z.double())


class OracleELF(ELF):
    def __init__(self, sigma_d: float = 0.0):
        spec = DataSpec(vocab_size=FIRST + K, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
        cfg = ELFConfig.from_preset("tiny", depth=1, hidden=32, heads=2, encoder_d_model=D)
        super().__init__(cfg, spec)
        g = torch.Generator().manual_seed(0)
        self.points = torch.randn(K, D, generator=g, dtype=torch.float64)  # unit-variance latents
        self.denoiser = OracleNet(self.points, sigma_d, self.path.noise_scale)

    @property
    def calls(self) -> list[Call]:
        return self.denoiser.calls

    def posterior_mean(self, z, t):
        return self.denoiser.posterior_mean(z, t)

    def nearest(self, z):
        d = (z[:, :, None, :] - self.points).pow(2).sum(-1).sqrt()
        return d.min(-1)


def check_passes(model: OracleELF, steps: int, ode: bool = True) -> torch.Tensor:
    """What the oracle cannot use, checked instead; returns the z of the decode pass.

    ``steps`` passes then one decode pass. Every pass gets the configured w; the channel
    is zeros at the first step and the previous step's x-prediction after; the passes
    run in denoise mode from t = 0 on (in grid order for the ODE; the SDE predicts at the
    churned t_b = alpha t, which can fall below the last t), the decode pass at t = 1 in decode mode with a zero
    channel, on the state the last Euler step reached: x_hat of the last pass, since
    that step starts at 1 - t >= t_eps.
    """
    *passes, decode = model.calls
    assert len(passes) == steps
    for c in model.calls:
        assert torch.equal(c.w, torch.full_like(c.w, W)), c.w
    assert not passes[0].sc.any() and float(passes[0].t[0]) == 0.0
    for prev, cur in zip(passes, passes[1:]):
        assert torch.equal(cur.sc, prev.x)  # self-conditioning carries the previous x_hat
        assert not ode or float(cur.t[0]) >= float(prev.t[0])
    assert all(c.mode is None or not c.mode.any() for c in passes)
    assert decode.mode is not None and bool((decode.mode == 1).all())
    assert bool((decode.t == 1).all()) and not decode.sc.any()
    torch.testing.assert_close(decode.z, passes[-1].x, rtol=0, atol=1e-5)
    return decode.z.double()


def test_decode_head_is_the_nearest_point_rule():
    """The real decode head with the oracle's weights picks the nearest point's id."""
    model = OracleELF()
    g = torch.Generator().manual_seed(3)
    h = torch.cat([model.points.view(1, K, D), 2 * torch.randn(1, 64, D, generator=g, dtype=torch.float64)], 1)
    ids = model.decode_logits(h).argmax(-1)
    assert torch.equal(ids, model.nearest(h).indices + FIRST)
    assert ids[0, :K].tolist() == list(range(FIRST, FIRST + K))


def _frequencies(ids: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(ids.flatten() - FIRST, minlength=K).double()
    return counts / counts.sum()


def test_posterior_mean_is_exact_at_the_ends():
    model = OracleELF(sigma_d=0.0)
    # t -> 1: the posterior of a point is the point itself
    z = model.points[[0, 2, 3]].view(1, 3, D).float()
    x = model.posterior_mean(z, torch.tensor([0.999]))
    assert torch.allclose(x, z.double(), atol=1e-6)
    # t = 0: no information, the prior mean
    x0 = model.posterior_mean(torch.randn(1, 3, D), torch.tensor([0.0]))
    assert torch.allclose(x0, (PROBS[:, None] * model.points).sum(0).expand(1, 3, D), atol=1e-12)


def test_ode_with_the_exact_x_prediction_lands_on_the_data_points():
    model = OracleELF(sigma_d=0.0).eval()
    sampler = ODESampler(ODESampler.Config(w=W, cfg_scale=1.0, grid="uniform"))
    req = SampleRequest(steps=16, num_samples=64, generator=torch.Generator().manual_seed(0))
    ids = sampler.sample(model, req)
    final_z = check_passes(model, steps=16)  # steps + 1 evaluations
    assert [float(c.t[0]) for c in model.calls[:-1]] == [i / 16 for i in range(16)]
    dist, nearest = model.nearest(final_z)
    # the last Euler step (from t = 15/16, outside the 0.05 clamp) lands exactly on x_hat,
    # which at t = 15/16 is a data point to within float precision
    assert float(dist.max()) < 1e-3
    assert torch.equal(ids, nearest + FIRST)  # the decode head recovers their tokens
    # and the points are drawn with the data's frequencies (1024 draws)
    assert torch.allclose(_frequencies(ids), PROBS, atol=0.05), _frequencies(ids)


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def test_ode_on_the_reference_grid_recovers_the_data_distribution():
    """Logit-normal grid (dense near t = 0; last inner point ~0.6 here), 64 steps, jittered data."""
    model = OracleELF(sigma_d=0.05).eval()
    sampler = ODESampler(ODESampler.Config(w=W, cfg_scale=1.0))
    ids = sampler.sample(model, SampleRequest(steps=64, num_samples=64, generator=torch.Generator().manual_seed(1)))
    dist, nearest = model.nearest(check_passes(model, steps=64))
    separation = float(torch.pdist(model.points).min())
    # the last step lands on x_hat at t_{N-1} ~ 0.6: close to a point, not always on it
    assert float((dist < 0.25 * separation).double().mean()) > 0.85
    assert torch.equal(ids, nearest + FIRST)
    assert torch.allclose(_frequencies(ids), PROBS, atol=0.05), _frequencies(ids)


def test_sde_churn_is_a_sharpening_heuristic():
    """The code-form SDE (gamma 1.5) with the exact denoiser still lands near the points
    and decodes them, but it is not an exact sampler: z_b carries less noise than the
    path's marginal at t_b (``_sde_step`` of lillian039/ELF@b29d883), which sharpens the distribution towards
    its likelier points (lower entropy; the paper's gamma trades Gen PPL for entropy).
    """
    model = OracleELF(sigma_d=0.05).eval()
    sampler = SDESampler(SDESampler.Config(w=W, gamma=1.5))
    ids = sampler.sample(model, SampleRequest(steps=32, num_samples=64, generator=torch.Generator().manual_seed(1)))
    dist, nearest = model.nearest(check_passes(model, steps=32, ode=False))
    separation = float(torch.pdist(model.points).min())
    assert float((dist < 0.25 * separation).double().mean()) > 0.7
    assert torch.equal(ids, nearest + FIRST)
    freq = _frequencies(ids)
    assert _entropy(freq) < _entropy(PROBS) - 0.1, freq
    assert int(freq.argmax()) == int(PROBS.argmax())
