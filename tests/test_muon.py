"""MuonOptax against optax.contrib.muon's formulas, written out by hand in float64 numpy.

The expected values below never call dlmbench.muon: each is the optax rule
(google-deepmind/optax@2edbcbe, optax/contrib/_muon.py) spelled out step by step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlmbench.muon import MuonOptax, param_groups

LR, BETA, EPS, WD = 0.02, 0.95, 1e-8, 0.1
B1, B2 = 0.9, 0.999
A, B, C = 3.4445, -4.7750, 2.0315

W0 = np.array([[0.3, -0.2, 0.5], [0.1, 0.4, -0.3], [-0.6, 0.2, 0.1], [0.25, -0.15, 0.35]])  # (out 4, in 3)
G1 = np.array([[0.5, -1.0, 0.2], [0.3, 0.8, -0.4], [-0.7, 0.1, 0.9], [0.2, -0.3, 0.6]])
G2 = np.array([[-0.2, 0.4, 0.1], [0.9, -0.5, 0.3], [0.1, 0.6, -0.8], [-0.4, 0.2, 0.7]])
BIAS0 = np.array([0.1, -0.2, 0.3])
BG1 = np.array([0.5, -0.25, 2.0])
BG2 = np.array([-0.1, 0.75, 1.5])


def ns_by_hand(m: np.ndarray) -> np.ndarray:
    """optax's orthogonalize_via_newton_schulz: the wide orientation, 5 quintic steps."""
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / (np.sqrt((x * x).sum()) + EPS)
    for _ in range(5):
        a = x @ x.T
        x = A * x + (B * a + C * (a @ a)) @ x
    return x.T if m.shape[0] > m.shape[1] else x


def muon_by_hand(w: np.ndarray, grads: list[np.ndarray], scale: float, wd: float = WD) -> np.ndarray:
    mu = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        mu = BETA * mu + (1 - BETA) * g
        mu_hat = BETA * (mu / (1 - BETA ** (t + 1))) + (1 - BETA) * (g / (1 - BETA**t))
        update = scale * ns_by_hand(mu_hat) + wd * w
        w = w - LR * update
    return w


def adam_by_hand(p: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    mu, nu = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        mu = B1 * mu + (1 - B1) * g
        nu = B2 * nu + (1 - B2) * g * g
        mu_hat = B1 * (mu / (1 - B1 ** (t + 1))) + (1 - B1) * (g / (1 - B1**t))
        nu_hat = nu / (1 - B2**t)
        p = p - LR * (mu_hat / (np.sqrt(nu_hat) + EPS))  # adam_weight_decay 0, eps_root 0
    return p


def run(w0: np.ndarray, grads: list[np.ndarray], layout: str = "out_in", bias_grads=None) -> tuple:
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    b = torch.nn.Parameter(torch.tensor(BIAS0, dtype=torch.float32))
    opt = MuonOptax([{"params": [w], "muon": True, "layout": layout}, {"params": [b], "muon": False}],
                    lr=LR, weight_decay=WD)
    for i, g in enumerate(grads):
        w.grad = torch.tensor(g, dtype=torch.float32)
        b.grad = torch.tensor((bias_grads or [BG1, BG2])[i], dtype=torch.float32)
        opt.step()
    return w.detach().double().numpy(), b.detach().double().numpy()


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_one_step_on_a_tall_matrix_and_a_bias():
    w, b = run(W0, [G1])
    close(w, muon_by_hand(W0, [G1], scale=math.sqrt(4 / 3)))  # (out 4, in 3): fan_out / fan_in = 4/3
    close(b, adam_by_hand(BIAS0, [BG1]))


def test_second_step_uses_bias_corrected_nesterov():
    w, b = run(W0, [G1, G2])
    close(w, muon_by_hand(W0, [G1, G2], scale=math.sqrt(4 / 3)))
    close(b, adam_by_hand(BIAS0, [BG1, BG2]))
    # the second step is where a missing correction shows: the uncorrected Nesterov moment
    # (beta mu + (1 - beta) g, no division) gives another direction
    mu1 = (1 - BETA) * G1
    mu2 = BETA * mu1 + (1 - BETA) * G2
    w1 = muon_by_hand(W0, [G1], scale=math.sqrt(4 / 3))
    uncorrected = w1 - LR * (math.sqrt(4 / 3) * ns_by_hand(BETA * mu2 + (1 - BETA) * G2) + WD * w1)
    assert np.abs(w - uncorrected).max() > 1e-4


def test_wide_matrices_and_flax_layout_get_their_own_scale():
    wide = W0.T.copy()  # (out 3, in 4): fan_out < fan_in, scale 1, no transpose
    w, _ = run(wide, [G1.T.copy()])
    close(w, muon_by_hand(wide, [G1.T.copy()], scale=1.0))
    # the same 4 x 3 tensor read as flax's (in, out): fan_in 4, fan_out 3, scale 1
    w, _ = run(W0, [G1], layout="in_out")
    close(w, muon_by_hand(W0, [G1], scale=1.0))
    # and read as (out, in), sqrt(4/3): the layout changes the step
    tall, _ = run(W0, [G1])
    assert np.abs(tall - w).max() > 1e-4


def test_transpose_rule_orthogonalises_the_wide_orientation():
    """A tall matrix is orthogonalised through its 3 x 3 Gram matrix and transposed back:
    the result's rows are the wide solution's columns, and its columns are near-orthonormal."""
    w_tall, _ = run(W0, [G1], layout="in_out")  # scale 1, isolates the orthogonalisation
    w_wide, _ = run(W0.T.copy(), [G1.T.copy()])
    close(w_tall, w_wide.T)
    step = (W0 * (1 - LR * WD) - w_tall) / LR  # the orthogonalised update
    s = np.linalg.svd(step, compute_uv=False)
    assert s.shape == (3,) and np.all((s > 0.5) & (s < 1.5))  # optax's NS lands in ~(0.5, 1.5)


def test_newton_schulz_works_on_the_smaller_gram_matrix():
    """optax transposes when rows > cols, so each iteration multiplies 3 x 3 Gram matrices,
    never 4 x 4 ones (the outcome is the same in exact arithmetic; the cost is not)."""
    from torch.overrides import TorchFunctionMode

    from dlmbench.muon import orthogonalize

    class Shapes(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen: list[tuple[int, ...]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
                self.seen.append(tuple(out.shape))
            return out

    for m in (torch.tensor(G1, dtype=torch.float32), torch.tensor(G1.T.copy(), dtype=torch.float32)):
        with Shapes() as mode:
            out = orthogonalize(m)
        assert out.shape == m.shape and (3, 3) in mode.seen and (4, 4) not in mode.seen


def test_adam_eps_is_added_after_the_square_root():
    """Where |g| ~ eps the placement shows: optax divides by sqrt(nu_hat) + eps."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = MuonOptax([{"params": [p], "muon": False}], lr=1.0)
    g = np.array([1e-8, -3e-8])
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    # step 1: mu_hat = b1 (1-b1) g / (1-b1^2) + g = g (1 + b1 / (1 + b1)), sqrt(nu_hat) = |g|
    want = -(g * (1 + B1 / (1 + B1))) / (np.abs(g) + EPS)
    close(p.detach().double().numpy(), want)
    close(p.detach().double().numpy(), adam_by_hand(np.zeros(2), [g]) / LR)


def test_non_matrices_get_nesterov_adam_and_missing_grads_count_as_zero():
    tokens = torch.nn.Parameter(torch.tensor(np.arange(6.0).reshape(1, 2, 3) / 10, dtype=torch.float32))
    opt = MuonOptax([{"params": [tokens], "muon": False}], lr=LR)
    g = np.array([[[0.3, -0.1, 0.2], [1.0, 0.0, -0.5]]])
    tokens.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    tokens.grad = None  # unused this step (ELF alternates its branches): JAX's zero gradient
    opt.step()
    want = adam_by_hand(np.arange(6.0).reshape(1, 2, 3) / 10, [g, np.zeros_like(g)])
    close(tokens.detach().double().numpy(), want)


def test_param_groups_follow_optax_partition():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)
            self.embed = torch.nn.Embedding(10, 3)
            self.tokens = torch.nn.Parameter(torch.zeros(1, 4, 3))

    net = Net()
    groups = {(g["muon"], g.get("layout")): {id(p) for p in g["params"]}
              for g in param_groups(net, net.parameters())}
    assert groups == {
        (True, "out_in"): {id(net.linear.weight)},
        (True, "in_out"): {id(net.embed.weight)},  # flax's Embed is (vocab, dim) too
        (False, None): {id(net.linear.bias), id(net.tokens)},
    }
    with pytest.raises(ValueError, match="muon=True/False"):
        MuonOptax(net.parameters(), lr=LR)
    with pytest.raises(ValueError, match="matrices only"):
        MuonOptax([{"params": [net.tokens], "muon": True}], lr=LR)


def test_build_optimizer_selects_it():
    from dlmbench.model import ModelConfig
    from dlmbench.training import build_optimizer

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = ModelConfig(optimizer="muon-optax", lr=LR, betas=(B1, B2), weight_decay=WD)
            self.net = torch.nn.Linear(3, 4)

        def trainable_parameters(self):
            return list(self.parameters())

    opt = build_optimizer(M())
    assert isinstance(opt, MuonOptax)
    assert [(g["muon"], g["adam_betas"], g["weight_decay"], g["adam_weight_decay"]) for g in opt.param_groups] \
        == [(True, (B1, B2), WD, 0.0), (False, (B1, B2), WD, 0.0)]


def test_fit_trains_with_it():
    import toyplugin

    from dlmbench.data import DataSpec
    from dlmbench.training import fit

    spec = DataSpec(12, 6, 0, 1, 2, 3, 0)
    model = toyplugin.ToyModel(toyplugin.ToyConfig(optimizer="muon-optax", lr=2e-2, warmup_steps=2), spec)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    train = torch.randint(5, 12, (16, 6), generator=torch.Generator().manual_seed(0))
    report = fit(model, train, batch_size=8, steps=4)
    assert len(report.losses) == 4 and all(math.isfinite(x) for x in report.losses)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.trainable_parameters()))
