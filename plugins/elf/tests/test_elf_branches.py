"""ELF branch checks: each term of the loss and each input of the samplers, on cases small
enough to write out by hand.

A stand-in replaces the network: an affine map of every input it gets, each with its own
coefficient, plus a mean over the sequence of ``z`` and of ``sc`` (so dropping the source
from a pass changes the target positions' predictions), and ``hidden = z`` for the decode
head, a dot product with the latent table. A lookup table replaces the encoder, and every
random draw is pinned. Each test then writes the expected network inputs and the expected
loss or next state from the formulas of the paper (Sec. 3.1 Eq. 1, Alg. 3-6) and of the
authors' code (``lillian039/ELF@b29d883``: ``src/train_step.py`` for the loss,
``src/utils/sampling_utils.py`` for the steps, ``src/utils/generation_utils.py`` for the
grid loop and the decode pass), never from the functions under test.

The network runs in float32 and the tests in float64: the tolerance (1e-5) is float32
rounding of O(1) values. Where the term a test guards could be small, the test also
asserts that it moves the value by more than 1e-2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

import dlmbench_elf.path as elf_path
from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench_elf import samplers
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.denoiser import DenoiserOutput
from dlmbench_elf.model import ELF
from dlmbench_elf.samplers import ODESampler, SDESampler

pytestmark = pytest.mark.usefixtures("one_thread")

L, D, V = 3, 4, 8  # 3 positions, 4-d latents (the smallest encoder width ELF accepts), 8 ids
SPEC = DataSpec(vocab_size=V, seq_len=L, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
COND = DataSpec(vocab_size=V, seq_len=L, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=1)
S_N = 2.0  # denoiser_noise_scale of every training config at b29d883
T_EPS = 0.05

# the stand-in encoder: token -> latent (ids 5 and 6 are constant vectors, so a case built
# from them is the same scalar computation in every latent channel)
LATENT = torch.zeros(V, D, dtype=torch.float64)
LATENT[5], LATENT[6] = 1.0, -0.5
LATENT[7] = torch.tensor([0.5, -1.0, 0.25, 0.75], dtype=torch.float64)

# the stand-in network: x = A z + B sc + C mean_L(z) + E mean_L(sc) + C_T t + C_W w + C_M mode
A, B, C, E, C_T, C_W, C_M = 0.5, 0.25, 0.125, 0.0625, 1.0, 0.0625, 2.0
TOL = dict(rtol=1e-5, atol=1e-5)


def col(s) -> Tensor:
    """A per-row scalar (or one scalar) as a ``(rows, 1, 1)`` float64 column."""
    return torch.as_tensor(s, dtype=torch.float64).reshape(-1, 1, 1)


def net(z: Tensor, sc: Tensor, t, w, mode=0.0) -> Tensor:
    """The stand-in's x-prediction, in float64 (the rule the tests compute by hand)."""
    return (A * z + B * sc + C * z.mean(1, keepdim=True) + E * sc.mean(1, keepdim=True)
            + C_T * col(t) + C_W * col(w) + C_M * col(mode))


class Call(NamedTuple):
    z: Tensor
    sc: Tensor
    t: Tensor
    w: Tensor
    mode: Tensor  # zeros when the caller passed None (denoise mode)
    grad: bool  # the gradient pass of the loss (the self-conditioning passes run without)


class StandIn(nn.Module):
    """Records every call's inputs and returns :func:`net` of them; ``hidden`` is ``z``."""

    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(1, 1)  # ELF reads its dtype and device off this weight
        self.calls: list[Call] = []

    def forward(self, z, sc, t, w, mode=None) -> DenoiserOutput:
        mode = torch.zeros_like(t) if mode is None else mode
        call = Call(*(a.detach().double().clone() for a in (z, sc, t, w, mode)), torch.is_grad_enabled())
        self.calls.append(call)
        return DenoiserOutput(net(call.z, call.sc, call.t, call.w, call.mode).float(), z)

    def decode_head(self, hidden: Tensor, weight=None) -> Tensor:
        return hidden.double() @ LATENT.T  # logit of id v: <hidden, latent of v>


def elf(spec: DataSpec = SPEC, *, monkeypatch, **over) -> tuple[ELF, StandIn, dict]:
    """A tiny ELF with the stand-in network and the lookup encoder (what it was given is
    recorded in the returned dict)."""
    cfg = ELFConfig.from_preset("tiny", depth=1, hidden=32, heads=2, encoder="learned",
                                encoder_d_model=D, encoder_heads=2, **over)
    model = ELF(cfg, spec)
    model.denoiser = stand_in = StandIn()
    seen: dict = {}

    def encode(tokens, drop=None, prefix_len=None, lengths=None):
        seen["drop"] = drop
        return LATENT[tokens].float()

    monkeypatch.setattr(model, "encode", encode)
    return model, stand_in, seen


# --- pinned draws of the loss ---------------------------------------------------------------
class Pinned:
    """A distribution that returns ``value`` for whatever shape it is asked (recorded)."""

    def __init__(self, value):
        self.value = torch.as_tensor(value, dtype=torch.float64)
        self.shapes: list[tuple[int, ...]] = []

    def sample(self, shape, generator=None, device=None, dtype=torch.float32):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.shapes.append(shape)
        assert self.value.numel() == math.prod(shape), f"asked for {shape}, pinned {tuple(self.value.shape)}"
        return self.value.reshape(shape).to(dtype)


class Draws:
    """Pins every draw of ``ELF.loss``: t, w and the decode levels through the model's
    distributions; the Bernoulli choices (label drop, decode row, self-conditioning, as
    uniforms 0 = yes, 0.999 = no) and the two Gaussian noises in the order the loss draws
    them. ``done`` says every pinned draw was used."""

    def __init__(self, monkeypatch, model, *, t, w, eps, decode, self_cond, drop=None, level=None, decode_eps=None):
        flags = ([drop] if drop is not None else []) + [decode, self_cond]
        self.uniforms = [torch.tensor([0.0 if f else 0.999 for f in fl]) for fl in flags]
        self.normals = [torch.as_tensor(n).float() for n in (eps, decode_eps) if n is not None]
        self.level = Pinned(0.5 if level is None else level)
        monkeypatch.setattr(model, "time_dist", Pinned(t))
        monkeypatch.setattr(model, "scale_dist", Pinned(w))
        monkeypatch.setattr(model, "decode_level_dist", self.level)
        monkeypatch.setattr(torch, "rand", self._rand)
        monkeypatch.setattr(torch, "randn_like", self._randn_like)

    def _rand(self, *shape, **kw):
        u = self.uniforms.pop(0)
        assert tuple(u.shape) == tuple(shape), (shape, u.shape)
        return u

    def _randn_like(self, x, **kw):
        n = self.normals.pop(0)
        assert n.shape == x.shape, (x.shape, n.shape)
        return n.clone()

    @property
    def done(self) -> bool:
        return not self.uniforms and not self.normals


def channels(*per_token: float) -> Tensor:
    """``(1, L, D)``: one value per token, the same in every latent channel."""
    return torch.tensor(per_token, dtype=torch.float64).view(1, -1, 1).expand(1, len(per_token), D).clone()


def noise(seed: int, rows: int = 1) -> Tensor:
    return torch.randn(rows, L, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def grad_pass(stand_in: StandIn) -> Call:
    (call,) = [c for c in stand_in.calls if c.grad]
    return call


# --- reference formulas (paper Eq. 1 / Alg. 3; train_step.py at b29d883), one row at a time ---
def flow_point(x: Tensor, eps: Tensor, t: float, src: int = 0) -> tuple[Tensor, Tensor, float]:
    """z_t = t x + (1-t) s_n eps with the first ``src`` positions clean; the regression
    target (x - z_t) / max(1 - t, t_eps) (both the target and the prediction clamp)."""
    z = t * x + (1 - t) * S_N * eps
    z[:, :src] = x[:, :src]
    d = max(1 - t, T_EPS)
    return z, (x - z) / d, d


def denoise_row(x: Tensor, eps: Tensor, t: float, w: float, sc_on: bool, src: int = 0) -> dict:
    """One denoise row: its network inputs and per-token squared error, self-conditioned
    with the SC-CFG target v + (1 - 1/w)(v_c - v_u) (Alg. 3) when ``sc_on``."""
    z, v, d = flow_point(x, eps, t, src)
    sc0 = torch.zeros_like(x)
    sc0[:, :src] = x[:, :src]  # the clean source is always in the channel
    if sc_on:
        x_u = net(z, sc0, t, w)  # pass 1: empty channel
        x_u[:, :src] = x[:, :src]
        v_u = (x_u - z) / d
        v_c = (net(z, x_u, t, w) - z) / d  # pass 2: channel x_u
        target, sc = v + (1 - 1 / w) * (v_c - v_u), x_u
    else:
        target, sc = v, sc0
    v_hat = (net(z, sc, t, w) - z) / d  # the gradient pass
    return {"z": z, "sc": sc, "se": (v_hat - target).pow(2).mean(-1)[0]}


def cross_entropy(hidden: Tensor, tokens: Tensor) -> Tensor:
    """Per-token CE of the stand-in decode head: logsumexp_v <h, e_v> - <h, e_token>."""
    logits = hidden @ LATENT.T
    return torch.logsumexp(logits, -1) - logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# --- the loss ---------------------------------------------------------------------------------
def test_flow_branch_by_hand(monkeypatch):
    """Denoise row, no self-conditioning: z = t x + (1-t) 2 eps and the velocity-space MSE.

    tokens (5, 6, 5) -> x = (1, -.5, 1) in every channel; eps = (.5, .25, -.25); t = .25, w = 2:
      z = .25 x + 1.5 eps = (1, .25, -.125);  v = (x - z)/.75 = (0, -1, 1.5)
      x_hat = .5 z + C mean(z) + C_T t + C_W w = .5 z + .125 * .375 + .25 + .125 = .5 z + .421875
      v_hat - v = (x_hat - z)/.75 - v = (-.078125, 1.046875, -.640625)/.75
    Catches: t and 1 - t swapped, another noise scale, v without its 1/(1 - t), the
    target or prediction taken at other inputs, the MSE summed over channels.
    """
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    draws = Draws(monkeypatch, model, t=[0.25], w=[2.0], eps=channels(0.5, 0.25, -0.25),
                  decode=[False], self_cond=[False])
    loss = model.loss(Batch(torch.tensor([[5, 6, 5]])))
    assert draws.done
    call = grad_pass(stand_in)
    torch.testing.assert_close(call.z, channels(1.0, 0.25, -0.125), **TOL)
    assert not call.sc.any() and call.t.tolist() == [0.25] and call.w.tolist() == [2.0]
    assert call.mode.tolist() == [0.0]
    expected = (0.078125**2 + 1.046875**2 + 0.640625**2) / 0.75**2 / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert model.last_losses["mse"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t", [0.6, 0.98])  # 0.98: inside the clamp, 1 - t < t_eps
def test_flow_branch_denominator_is_clamped(monkeypatch, t):
    """Near the data both v and v_hat divide by max(1 - t, .05) (net_out_to_v_x at b29d883
    for both); the unclamped target x - 2 eps would differ at t = .98 by a factor .02/.05."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    x, eps = LATENT[torch.tensor([[7, 5, 6]])], noise(1)
    Draws(monkeypatch, model, t=[t], w=[1.5], eps=eps, decode=[False], self_cond=[False])
    loss = model.loss(Batch(torch.tensor([[7, 5, 6]])))
    row = denoise_row(x, eps, t, 1.5, sc_on=False)
    torch.testing.assert_close(grad_pass(stand_in).z, row["z"], **TOL)
    assert loss.item() == pytest.approx(row["se"].mean().item(), rel=1e-5)


def test_guidance_target_by_hand(monkeypatch):
    """A self-conditioned row: two no-grad passes (empty channel -> x_u; channel x_u -> v_c)
    and the target v + (1 - 1/w)(v_c - v_u) (Alg. 3, Eq. 3). w = 4 tells 1 - 1/w = .75
    from 1/w, 1 - w and w - 1. Catches: the guidance term dropped or with another weight,
    v_c and v_u swapped, the channel not fed x_u, the no-grad passes at another w or t."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    tokens = torch.tensor([[7, 6, 5]])
    x, eps, t, w = LATENT[tokens], noise(2), 0.25, 4.0
    Draws(monkeypatch, model, t=[t], w=[w], eps=eps, decode=[False], self_cond=[True])
    loss = model.loss(Batch(tokens))
    z, v, d = flow_point(x, eps, t)
    x_u = net(z, torch.zeros_like(z), t, w)
    v_u, v_c = (x_u - z) / d, (net(z, x_u, t, w) - z) / d
    target = v + 0.75 * (v_c - v_u)
    # the gradient pass sees the channel x_u, so its v_hat is v_c
    call = grad_pass(stand_in)
    torch.testing.assert_close(call.sc, x_u, **TOL)
    torch.testing.assert_close(call.z, z, **TOL)
    assert loss.item() == pytest.approx((v_c - target).pow(2).mean().item(), rel=1e-5)
    # the guidance moves the loss: it is not the plain target's
    assert abs(loss.item() - (v_c - v).pow(2).mean().item()) > 1e-2


def test_self_conditioning_mask_is_per_row(monkeypatch):
    """Row 0 self-conditions (channel x_u, guided target), row 1 does not (zero channel,
    plain target), at their own t and w. Catches: every row (or none) self-conditioned,
    the guidance applied to rows without the channel, t or w taken from another row."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    tokens = torch.tensor([[7, 6, 5], [5, 7, 7]])
    x, eps, t, w = LATENT[tokens], noise(3, rows=2), [0.25, 0.6], [4.0, 1.5]
    Draws(monkeypatch, model, t=t, w=w, eps=eps, decode=[False, False], self_cond=[True, False])
    loss = model.loss(Batch(tokens))
    rows = [denoise_row(x[r:r + 1], eps[r:r + 1], t[r], w[r], sc_on=(r == 0)) for r in range(2)]
    call = grad_pass(stand_in)
    torch.testing.assert_close(call.sc, torch.cat([rows[0]["sc"], rows[1]["sc"]]), **TOL)
    assert not call.sc[1].any()
    assert call.t.tolist() == pytest.approx(t) and call.w.tolist() == w
    assert loss.item() == pytest.approx(torch.cat([r["se"] for r in rows]).mean().item(), rel=1e-5)


@pytest.mark.parametrize("spec,s_d", [(SPEC, 5.0), (COND, 1.0)])  # decoder_noise_scale 5 (OWT), 1 (De-En)
def test_decode_branch_inputs_and_cross_entropy(monkeypatch, spec, s_d):
    """Row 0 decodes, row 1 denoises (self-conditioned), in one gradient pass.

    The decode row is fed z = p x + (1-p) s_d eps' with its own level p per token (source
    positions corrupted too: no restore on decoder_z), t = 1, mode 1 and an all-zero
    channel (``sc_half = x_pred_cond * (1 - decoder_mask)``), and scores CE through the
    decode head; the loss is (CE tokens + MSE tokens) / scored tokens. Catches: decode at
    t < 1 or in denoise mode, one level per row, the wrong noise scale, the channel (the
    clean source, on a conditional task) left in, the source restored, CE on the wrong
    rows or the MSE taken on the decode row."""
    model, stand_in, _ = elf(spec, monkeypatch=monkeypatch)
    P = spec.prefix_len
    tokens = torch.tensor([[7, 6, 5], [6, 7, 5]])
    x, eps, eps_d = LATENT[tokens], noise(4, rows=2), noise(5, rows=2)
    p = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.4]], dtype=torch.float64).view(2, L, 1)
    t, w = [0.4, 0.3], [2.0, 3.0]
    draws = Draws(monkeypatch, model, t=t, w=w, eps=eps, decode=[True, False], self_cond=[True, True],
                  drop=[False, False] if P else None, level=p, decode_eps=eps_d)
    loss = model.loss(Batch(tokens))
    assert draws.done and draws.level.shapes == [(2, L, 1)]  # a level per token of every row
    assert model.decode_noise_scale == s_d
    z_dec = p[:1] * x[:1] + (1 - p[:1]) * s_d * eps_d[:1]
    den = denoise_row(x[1:], eps[1:], t[1], w[1], sc_on=True, src=P)
    call = grad_pass(stand_in)
    torch.testing.assert_close(call.z, torch.cat([z_dec, den["z"]]), **TOL)
    assert not call.sc[0].any()
    torch.testing.assert_close(call.sc[1:], den["sc"], **TOL)
    assert call.t.tolist() == pytest.approx([1.0, t[1]]) and call.mode.tolist() == [1.0, 0.0]
    assert call.w.tolist() == w
    ce = cross_entropy(z_dec, tokens[:1])[0]
    expected = (ce[P:].sum() + den["se"][P:].sum()) / (2 * (L - P))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.last_losses["ce"].item() == pytest.approx(ce[P:].mean().item(), rel=1e-5)


def test_label_drop_zeroes_the_source_and_the_loss_skips_it(monkeypatch):
    """Input CFG in training (label_drop_prob): a dropped row's source latents are zero in
    z and in the channel (``x0`` zeroed before the self-conditioning passes), the encoder
    is told which rows dropped, the kept row keeps the clean source, and only target
    positions are scored. Catches: the zeroing forgotten or applied to every row, the
    source scored, the channel keeping a dropped source."""
    model, stand_in, seen = elf(COND, monkeypatch=monkeypatch)
    tokens = torch.tensor([[7, 6, 5], [7, 5, 6]])
    x, eps, t, w = LATENT[tokens], noise(6, rows=2), [0.3, 0.5], [2.0, 4.0]
    Draws(monkeypatch, model, t=t, w=w, eps=eps, decode=[False, False], self_cond=[True, True], drop=[True, False])
    loss = model.loss(Batch(tokens))
    assert seen["drop"].tolist() == [True, False]
    x_dropped = x.clone()
    x_dropped[0, :1] = 0.0
    rows = [denoise_row(x_dropped[r:r + 1], eps[r:r + 1], t[r], w[r], sc_on=True, src=1) for r in range(2)]
    call = grad_pass(stand_in)
    assert not call.z[0, 0].any() and not call.sc[0, 0].any()
    torch.testing.assert_close(call.z[1, 0], x[1, 0], **TOL)
    torch.testing.assert_close(call.sc, torch.cat([r["sc"] for r in rows]), **TOL)
    expected = torch.cat([r["se"][1:] for r in rows]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_velocity_prediction_regresses_the_network_output(monkeypatch):
    """prediction = "v": the network's output is v_hat itself (the x-prediction is derived
    from it), so the loss is mean((out - v)^2)."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch, prediction="v")
    tokens = torch.tensor([[5, 7, 6]])
    x, eps, t = LATENT[tokens], noise(7), 0.3
    Draws(monkeypatch, model, t=[t], w=[2.0], eps=eps, decode=[False], self_cond=[False])
    loss = model.loss(Batch(tokens))
    z, v, _ = flow_point(x, eps, t)
    assert loss.item() == pytest.approx((net(z, torch.zeros_like(z), t, 2.0) - v).pow(2).mean().item(), rel=1e-5)


# --- the samplers ---------------------------------------------------------------------------------
def pin_noise(monkeypatch, *draws: Tensor) -> list[Tensor]:
    """The sampler's Gaussian draws (initial noise, then the SDE's eps) in order."""
    queue = [d.float() for d in draws]

    def recorded(shape, generator, device, dtype):
        assert queue, f"an unexpected extra draw of shape {tuple(shape)}"
        assert tuple(shape) == tuple(queue[0].shape), (shape, queue[0].shape)
        return queue.pop(0).to(dtype)

    monkeypatch.setattr(samplers, "_normal", recorded)
    return queue


def request(steps: int, rows: int = 1, prefix=None) -> SampleRequest:
    return SampleRequest(steps=steps, num_samples=rows, generator=torch.Generator().manual_seed(0), prefix=prefix)


def assert_call(call: Call, z, sc, t, w, mode=0.0):
    torch.testing.assert_close(call.z, z, **TOL)
    torch.testing.assert_close(call.sc, sc, **TOL)
    assert call.t.tolist() == pytest.approx([t] * len(call.t), abs=1e-6)
    assert call.w.tolist() == pytest.approx([w] * len(call.w)) and call.mode.tolist() == [mode] * len(call.mode)


def test_ode_steps_carry_self_conditioning_and_w_by_hand(monkeypatch):
    """Uniform grid (0, 1/3, 2/3, 1), w = 2.5, z_0 = 2 n; each step feeds the previous x_hat
    (zeros first) and w, and z' = z + (t' - t)(x_hat - z)/(1 - t), which on this grid is
      z_1 = (2 z_0 + x_0)/3,  z_2 = (z_1 + x_1)/2,  z_3 = x_2;
    then the decode pass at t = 1, mode 1, zero channel, same w, on z_3. Catches: the
    channel not carried (or carrying z), w replaced, the grid shifted, the step's sign or
    size, the decode pass at t < 1, in denoise mode, with the channel, or before the last step."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    n = noise(8)
    pin_noise(monkeypatch, n)
    w = 2.5
    ids = ODESampler(ODESampler.Config(w=w, grid="uniform")).sample(model, request(3))
    z0, zero = S_N * n, torch.zeros_like(n)
    x0 = net(z0, zero, 0.0, w)
    z1 = (2 * z0 + x0) / 3
    x1 = net(z1, x0, 1 / 3, w)
    z2 = (z1 + x1) / 2
    x2 = net(z2, x1, 2 / 3, w)
    z3 = x2
    calls = stand_in.calls
    assert len(calls) == 4
    assert_call(calls[0], z0, zero, 0.0, w)
    assert_call(calls[1], z1, x0, 1 / 3, w)
    assert_call(calls[2], z2, x1, 2 / 3, w)
    assert_call(calls[3], z3, zero, 1.0, w, mode=1.0)
    assert torch.equal(ids, (z3 @ LATENT.T).argmax(-1))


def test_sde_churns_every_step_but_the_last_by_hand(monkeypatch):
    """gamma 1.5 on the grid (0, 1/3, 2/3, 1): alpha = 1 - 1.5/3 = .5, so each churned step
    predicts at z_b = .5 z + .5 * 2 eps, t_b = .5 t, and steps from (z_b, t_b) to t'
    (``_sde_step``); the last step is plain Euler (``_generate_samples_single_batch``):
      z_1 = z_b0 + (1/3)(x_0 - z_b0),  z_2 = z_b1 + (2/3 - 1/6)(x_1 - z_b1)/(5/6),  z_3 = x_2.
    Catches: stepping from z instead of z_b, from t instead of t_b, churning the last step,
    eps not scaled by the noise scale, the channel not carried."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    n, e0, e1 = noise(9), noise(10), noise(11)
    left = pin_noise(monkeypatch, n, e0, e1)
    w = 2.5
    ids = SDESampler(SDESampler.Config(w=w, gamma=1.5, grid="uniform")).sample(model, request(3))
    assert not left  # exactly one eps per churned step
    zero = torch.zeros_like(n)
    zb0 = 0.5 * (S_N * n) + 0.5 * S_N * e0
    x0 = net(zb0, zero, 0.0, w)
    z1 = zb0 + (1 / 3) * (x0 - zb0)
    zb1 = 0.5 * z1 + 0.5 * S_N * e1
    x1 = net(zb1, x0, 1 / 6, w)
    z2 = zb1 + 0.6 * (x1 - zb1)
    x2 = net(z2, x1, 2 / 3, w)
    calls = stand_in.calls
    assert len(calls) == 4
    assert_call(calls[0], zb0, zero, 0.0, w)
    assert_call(calls[1], zb1, x0, 1 / 6, w)
    assert_call(calls[2], z2, x1, 2 / 3, w)
    assert_call(calls[3], x2, zero, 1.0, w, mode=1.0)
    assert torch.equal(ids, (x2 @ LATENT.T).argmax(-1))


def rows_at(calls: list[Call], t: float) -> list[tuple[Tensor, Tensor, float, float]]:
    """Every row the network saw at time t, however the passes were batched."""
    out = []
    for c in calls:
        for r in range(c.z.shape[0]):
            if abs(float(c.t[r]) - t) < 1e-6:
                out.append((c.z[r], c.sc[r], float(c.w[r]), float(c.mode[r])))
    return out


def assert_rows(seen, expected):
    """``seen`` holds exactly the ``expected`` (z, sc) rows, in any order."""
    assert len(seen) == len(expected), (len(seen), len(expected))
    left = list(expected)
    for z, sc, _, _ in seen:
        match = [i for i, (ez, esc) in enumerate(left)
                 if torch.allclose(z, ez, **TOL) and torch.allclose(sc, esc, **TOL)]
        assert match, f"unexpected input row z={z}, sc={sc}"
        left.pop(match[0])


def test_input_cfg_mixes_both_velocity_and_x_prediction(monkeypatch):
    """Conditional task, source id 7 at position 0, cfg_scale s = 1.5, w = 2.5, grid (0, .5, 1).

    Each step runs the conditional pass (z, channel; clean source) and the unconditional
    one (source zeroed in z and in the channel), then, as ``_forward_sample`` does,
      v = v_u + s (v_c - v_u)   steps z (source kept clean),
      x = x_u + s (x_c - x_u)   is the next step's channel (source restored);
    the decode pass sees the clean source and an all-zero channel. Catches: only v (or
    only x) mixed, the wrong scale (w or 1 for s), the source left in the unconditional
    z or channel, the source not restored, the ids not repeating the prefix."""
    model, stand_in, _ = elf(COND, monkeypatch=monkeypatch)
    n = noise(12)
    pin_noise(monkeypatch, n)
    s, w = 1.5, 2.5
    sampler = ODESampler(ODESampler.Config(w=w, cfg_scale=s, grid="uniform"))
    ids = sampler.sample(model, request(2, prefix=torch.tensor([[7]])))
    src = torch.zeros(1, L, D, dtype=torch.float64)
    src[0, 0] = LATENT[7]

    def without_source(a):
        a = a.clone()
        a[:, 0] = 0.0
        return a

    def step(z, sc, t, t_next):
        """Expected inputs at t, and the next z and channel."""
        zu, scu = without_source(z), without_source(sc)
        x_c, x_u = net(z, sc, t, w), net(zu, scu, t, w)
        d = 1 - t
        v_c, v_u = (x_c - z) / d, (x_u - zu) / d
        z_next = without_source(z + (t_next - t) * (v_u + s * (v_c - v_u))) + src
        sc_next = without_source(x_u + s * (x_c - x_u)) + src
        return [(z, sc), (zu, scu)], z_next, sc_next

    z0 = without_source(S_N * n) + src
    rows0, z1, sc1 = step(z0, src.clone(), 0.0, 0.5)
    rows1, z2, _ = step(z1, sc1, 0.5, 1.0)
    assert_rows(rows_at(stand_in.calls, 0.0), rows0)
    assert_rows(rows_at(stand_in.calls, 0.5), rows1)
    assert all(r[2] == w and r[3] == 0.0 for r in rows_at(stand_in.calls, 0.0) + rows_at(stand_in.calls, 0.5))
    assert len(stand_in.calls[-1].z) == 1
    assert_call(stand_in.calls[-1], z2, torch.zeros_like(z2), 1.0, w, mode=1.0)
    assert ids[0, 0] == 7 and torch.equal(ids[:, 1:], (z2 @ LATENT.T).argmax(-1)[:, 1:])
    # the mixing matters here: the conditional x alone gives another channel
    x_c1 = net(z0, src, 0.0, w)
    assert float((without_source(x_c1) - without_source(sc1)).abs().max()) > 1e-2


def test_logit_normal_grid_uses_the_training_distribution(monkeypatch):
    """The grid is 0, the N - 1 draws sigmoid(mean + std n) *sorted*, 1, with the model's
    training (t_mean, t_std) unless the sampler overrides them. Normals (2, -1):
      model t ~ logit-normal(-1, .5): sigmoid(0), sigmoid(-1.5) -> (0, .1824, .5, 1)
      sampler grid_mean .5, grid_std 1: sigmoid(2.5), sigmoid(-.5) -> (0, .3775, .9241, 1)
    and the ODE visits each point in order (t at the 1st..Nth pass, then the decode pass at 1).
    Catches: the grid unsorted, its endpoints dropped or shifted, the reference defaults
    (-1.5, .8) used instead of the model's, the sampler's override ignored."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch, t_mean=-1.0, t_std=0.5)
    sig = lambda a: 1 / (1 + math.exp(-a))  # noqa: E731
    for over, expected in (({}, [0.0, sig(-1.5), sig(0.0)]),
                           ({"grid_mean": 0.5, "grid_std": 1.0}, [0.0, sig(-0.5), sig(2.5)])):
        stand_in.calls.clear()
        normals = [torch.tensor([2.0, -1.0], dtype=torch.float64)]
        monkeypatch.setattr(elf_path, "_normal", lambda shape, g, device, dtype: normals.pop(0).to(dtype))
        pin_noise(monkeypatch, noise(13))
        ODESampler(ODESampler.Config(w=1.0, **over)).sample(model, request(3))
        assert not normals
        assert [float(c.t[0]) for c in stand_in.calls] == pytest.approx(expected + [1.0], abs=1e-6)


def test_every_ode_step_and_the_clamped_last_one(monkeypatch):
    """25 uniform steps: every step is z' = z + (1/25)(x_hat - z)/max(1 - t, .05) with the
    previous x_hat as channel; the last, from t = .96 (1 - t = .04 < t_eps), moves only
    .04/.05 = .8 of the way to x_hat (the code's clamp; the grid docstring's "N > 20")."""
    model, stand_in, _ = elf(monkeypatch=monkeypatch)
    pin_noise(monkeypatch, noise(14))
    w, N = 2.0, 25
    ODESampler(ODESampler.Config(w=w, grid="uniform")).sample(model, request(N))
    calls = stand_in.calls
    assert len(calls) == N + 1
    for i in range(N):
        t = i / N
        x_hat = net(calls[i].z, calls[i].sc, t, w)
        z_next = calls[i].z + (1 / N) * (x_hat - calls[i].z) / max(1 - t, T_EPS)
        assert calls[i].t.tolist() == pytest.approx([t], abs=1e-6)
        torch.testing.assert_close(calls[i + 1].z, z_next, **TOL)
        if i + 1 < N:
            torch.testing.assert_close(calls[i + 1].sc, x_hat, **TOL)
    x_last = net(calls[N - 1].z, calls[N - 1].sc, (N - 1) / N, w)
    torch.testing.assert_close(calls[N].z, calls[N - 1].z + 0.8 * (x_last - calls[N - 1].z), **TOL)
    assert float((calls[N].z - x_last).abs().max()) > 1e-2  # not landed: the clamp is live


# --- NFE and the guided prediction's plumbing -----------------------------------------------
@pytest.mark.parametrize("sampler_cls", [ODESampler, SDESampler])
@pytest.mark.parametrize("spec", [SPEC, COND], ids=["uncond", "cond"])
def test_nfe_is_exact_for_the_task(monkeypatch, sampler_cls, spec):
    """N + 1 passes, or 2N + 1 with input CFG on a conditional task (prefix_len 1 here:
    one source position is enough to guide); the count is exact given the spec."""
    from dlmbench.nfe import count_nfe

    model, _, _ = elf(spec, monkeypatch=monkeypatch)
    sampler = sampler_cls(sampler_cls.Config(cfg_scale=2.0, grid="uniform"))
    prefix = torch.tensor([[7], [6]]) if spec.prefix_len else None
    with count_nfe(model) as counter:
        sampler.sample(model, request(3, rows=2, prefix=prefix))
    expected = 2 * 3 + 1 if spec.prefix_len else 3 + 1
    assert sampler.exact_nfe() is True
    assert counter.per_sample(2) == sampler.max_nfe(3, spec) == expected
    assert sampler.max_nfe(3) == 2 * 3 + 1  # task unknown: the bound with guidance


def test_the_guided_prediction_restores_the_source_by_default():
    """``_x_hat``'s default is a task with a source: its positions come back clean."""
    from types import SimpleNamespace

    model = SimpleNamespace(predict=lambda z, sc, t, w: SimpleNamespace(x=z + 1.0))
    z = torch.zeros(2, L, D)
    src_mask = (torch.arange(L) < 1).view(1, L, 1)
    src = torch.zeros(2, L, D)
    src[:, 0] = 5.0
    w = torch.full((2,), 1.0)
    for cfg in (False, True):
        x_hat = ODESampler()._x_hat(model, z, z.clone(), 0.5, w, src_mask, src, cfg)
        assert torch.equal(x_hat[:, :1], src[:, :1])
        assert torch.equal(x_hat[:, 1:], torch.ones(2, L - 1, D))  # x_u = x_c = z + 1 there


@pytest.mark.parametrize("cfg", [False, True])
def test_the_guided_prediction_builds_its_time_on_the_latents_device(cfg):
    """The meta device stands in for an accelerator on the CPU suite: the time tensor the
    network gets is made where the latents are."""
    from types import SimpleNamespace

    seen = []

    def predict(z, sc, t, w):
        seen.append(t)
        return SimpleNamespace(x=torch.zeros_like(z))

    model = SimpleNamespace(predict=predict)
    z = torch.zeros(2, L, D, device="meta")
    src_mask = (torch.arange(L, device="meta") < 1).view(1, L, 1)
    w = torch.full((2,), 1.0, device="meta")
    out = ODESampler()._x_hat(model, z, z, 0.5, w, src_mask, torch.zeros_like(z), cfg)
    assert out.device.type == "meta"
    assert [t.device.type for t in seen] == ["meta"] and seen[0].shape == ((4,) if cfg else (2,))
