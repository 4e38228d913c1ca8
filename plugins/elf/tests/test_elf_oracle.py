"""Oracle-denoiser tests: the samplers with the exact posterior mean reach the data.

Data: every position holds one of K embedding points e_k (token 5 + k) with
probabilities pi_k, independently, plus optional Gaussian jitter sigma_d. On the path
z_t = t x + (1 - t) s_n eps the posterior is exact per position:

    z_t | k ~ N(t e_k, (t^2 sigma_d^2 + (1-t)^2 s_n^2) I)
    E[x | z_t] = sum_k r_k(z_t) (e_k + t sigma_d^2 / var_t (z_t - t e_k))

The oracle replaces the network by this E[x | z_t] (it ignores the self-conditioning
input and w) and its decode head maps a latent to the token of the nearest point.
"""

from __future__ import annotations

import math

import pytest
import torch

from dlmbench.data import DataSpec, SampleRequest
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.model import ELF, Prediction
from dlmbench_elf.samplers import ODESampler, SDESampler

pytestmark = pytest.mark.usefixtures("one_thread")

K, D, FIRST = 4, 16, 5
PROBS = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)


class OracleELF(ELF):
    def __init__(self, sigma_d: float = 0.0):
        spec = DataSpec(vocab_size=FIRST + K, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
        cfg = ELFConfig.from_preset("tiny", depth=1, hidden=32, heads=2, encoder_d_model=D)
        super().__init__(cfg, spec)
        g = torch.Generator().manual_seed(0)
        self.points = torch.randn(K, D, generator=g, dtype=torch.float64)  # unit-variance latents
        self.sigma_d = sigma_d
        self.final_z: torch.Tensor | None = None
        self.visits = 0

    def posterior_mean(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = z.double()
        tb = t.double().view(-1, 1, 1, 1)
        s = self.path.noise_scale
        var = (tb * self.sigma_d) ** 2 + ((1 - tb) * s) ** 2  # (B, 1, 1, 1)
        diff = z[:, :, None, :] - tb * self.points  # (B, L, K, D)
        logits = PROBS.log() - diff.pow(2).sum(-1) / (2 * var[..., 0])
        r = logits.softmax(-1)  # (B, L, K)
        cond_mean = self.points + (tb * self.sigma_d**2 / var) * diff  # (B, L, K, D)
        return (r[..., None] * cond_mean).sum(-2)

    def predict(self, z, sc, t, w, mode=None) -> Prediction:
        self.visits += 1
        if mode is not None and bool((mode > 0).all()):  # the decode pass sees the final z
            self.final_z = z.double().clone()
            return Prediction(z, torch.zeros_like(z), z)
        x = self.posterior_mean(z, t).float()
        return Prediction(x, self.path.velocity(x, z, t), x)

    def decode_logits(self, hidden):
        d2 = (hidden.double()[:, :, None, :] - self.points).pow(2).sum(-1)  # (B, L, K)
        logits = torch.full((*hidden.shape[:2], FIRST + K), -math.inf, dtype=torch.float64)
        logits[..., FIRST:] = -d2
        return logits

    def nearest(self, z):
        d = (z[:, :, None, :] - self.points).pow(2).sum(-1).sqrt()
        return d.min(-1)


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
    sampler = ODESampler(ODESampler.Config(w=1.0, cfg_scale=1.0, grid="uniform"))
    req = SampleRequest(steps=16, num_samples=64, generator=torch.Generator().manual_seed(0))
    ids = sampler.sample(model, req)
    assert model.visits == 17  # steps + 1 evaluations
    dist, nearest = model.nearest(model.final_z)
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
    sampler = ODESampler(ODESampler.Config(w=1.0, cfg_scale=1.0))
    ids = sampler.sample(model, SampleRequest(steps=64, num_samples=64, generator=torch.Generator().manual_seed(1)))
    dist, nearest = model.nearest(model.final_z)
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
    sampler = SDESampler(SDESampler.Config(w=1.0, gamma=1.5))
    ids = sampler.sample(model, SampleRequest(steps=32, num_samples=64, generator=torch.Generator().manual_seed(1)))
    dist, nearest = model.nearest(model.final_z)
    separation = float(torch.pdist(model.points).min())
    assert float((dist < 0.25 * separation).double().mean()) > 0.7
    assert torch.equal(ids, nearest + FIRST)
    freq = _frequencies(ids)
    assert _entropy(freq) < _entropy(PROBS) - 0.1, freq
    assert int(freq.argmax()) == int(PROBS.argmax())
