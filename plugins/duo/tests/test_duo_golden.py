"""Duo against golden outputs of the authors' own code (``s-sahoo/duo@7c9b498``).

``tests/fixtures/golden/duo/`` holds a tiny DiT in the released checkpoint layout and what
the upstream code computed with it (``make_fixtures.py`` there, run out of tree; its README
says how). Every test loads the fixture through :func:`load_official`, the path the
released ``s-sahoo/duo`` weights take, and feeds our code the inputs and the random draws
the upstream code used.

Tolerances: everything runs in fp32 on CPU (our DiT uses bf16 blocks on CUDA only), so
network outputs and the exact loss agree to float rounding (``rtol = atol = 1e-5``; the
largest differences seen are about 5x smaller). The curriculum loss is looser
(``rtol = 2e-4``) for a stated reason: the upstream code looks ``alpha_t`` up in a
100,000-row table by nearest row (gamma step 4e-5) where we interpolate a finer one, so
its ``alpha_t`` sits up to ``|dalpha/dgamma| * 2e-5`` off the exact value. Sampled tokens
must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench.nn import dit_weights
from dlmbench_duo import Duo, DuoAncestral, DuoConfig, DuoGreedyTail, duality_table, gpt2_spec, load_official

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "golden" / "duo"
GOLDEN = load_file(str(FIXTURE / "golden.safetensors"))
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
K, L = 50, 16
SPEC = DataSpec(vocab_size=K, seq_len=L, pad_id=0, bos_id=0, eos_id=0, mask_id=K - 1)
TOL = dict(rtol=1e-5, atol=1e-5)
CURRICULUM_TOL = dict(rtol=2e-4, atol=2e-5)

pytestmark = pytest.mark.usefixtures("one_thread")


def model(**overrides) -> Duo:
    return load_official(FIXTURE, spec=SPEC, **overrides)


class Replay:
    """Stands in for a ``torch`` random function: hands out the recorded draws in order,
    each only to a call asking for that shape, and checks that all were used."""

    def __init__(self, draws: list[torch.Tensor], size_at: int = 0):
        self.draws, self.size_at = list(draws), size_at  # size_at: index of the size argument

    def __call__(self, *args, **kwargs):
        size = kwargs.get("size", args[self.size_at:] if self.size_at == 0 else args[self.size_at])
        if isinstance(size, tuple) and len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = size[0]
        assert self.draws, f"an unexpected extra draw of shape {tuple(size)}"
        draw = self.draws.pop(0)
        assert tuple(size) == tuple(draw.shape), f"draw of shape {tuple(size)}, upstream drew {tuple(draw.shape)}"
        dtype = kwargs.get("dtype")
        return draw.to(dtype).clone() if dtype is not None and draw.is_floating_point() else draw.clone()

    def done(self) -> bool:
        return not self.draws


def test_the_fixture_is_the_upstream_commit_our_code_follows():
    assert MANIFEST["commit"].startswith("7c9b498") and MANIFEST["upstream"] == "s-sahoo/duo"
    net = model()
    cfg = net.config
    assert (cfg.hidden_size, cfg.n_blocks, cfg.n_heads, cfg.cond_dim, cfg.dropout) == (32, 2, 2, 16, 0.1)
    assert cfg.time_conditioning and not net.training
    # the released OWT curriculum window (scripts/train_owt_duo.sh) is our default
    assert "algo.curriculum.gamma_min=-3.55" in MANIFEST["hydra_overrides"]["curriculum"]
    assert (cfg.gamma_min, cfg.gamma_max, cfg.curriculum_tau) == (-3.55, -1.85, 1e-3)
    assert MANIFEST["scalars"]["curriculum_tau_inverse"] == 1 / cfg.curriculum_tau


def test_backbone_logits_match_upstream():
    with torch.no_grad():
        ours = model().network(GOLDEN["backbone_ids"], GOLDEN["backbone_sigma"])
    ref = GOLDEN["backbone_logits"]
    assert ref.std() > 0.3  # the fixture's perturbed adaLN/output layers give non-trivial logits
    torch.testing.assert_close(ours, ref, **TOL)


def test_log_x_theta_matches_upstream():
    """``TrainerBase.forward`` with ``sigma = -log alpha_t`` and a plain log-softmax."""
    with torch.no_grad():
        ours = model().log_probs(GOLDEN["backbone_ids"], GOLDEN["log_x_theta_t"])
    torch.testing.assert_close(ours, GOLDEN["log_x_theta"], **TOL)


def test_exact_loss_matches_upstream_under_its_draws(monkeypatch):
    """``DUO_BASE._loss`` / ``Diffusion.nll``: antithetic t, keep-or-resample masks and the
    uniform replacements from the recorded draws, the Rao-Blackwellised NELBO per token."""
    net, batch = model(), Batch(GOLDEN["loss_x0"])
    rand = [GOLDEN["exact_draw_t"], GOLDEN["exact_draw_move"]]
    with torch.no_grad():
        for call in ("terms", "loss", "nelbo"):
            monkeypatch.setattr(torch, "rand", Replay(rand))
            monkeypatch.setattr(torch, "randint", Replay([GOLDEN["exact_draw_uniform"]], size_at=2))
            out = net._exact_terms(batch)[0] if call == "terms" else getattr(net, call)(batch)
            assert torch.rand.done() and torch.randint.done()
            if call == "terms":
                torch.testing.assert_close(out, GOLDEN["exact_per_token"], **TOL)
            elif call == "loss":
                torch.testing.assert_close(out.reshape(1), GOLDEN["exact_value"], **TOL)
            else:
                torch.testing.assert_close(out, GOLDEN["exact_per_token"].sum(-1), **TOL)
    monkeypatch.undo()


def test_curriculum_alpha_matches_the_upstream_integral_table():
    """``DUO._gamma_to_alpha_dalpha_cached`` against our interpolated quadrature table.

    Upstream reads the nearest of 100,000 rows over gamma in [-5, -1] (step 4e-5), so its
    ``alpha_t`` is off by at most ``|dalpha/dgamma| * 2e-5`` (about 1e-5 here, ``alpha_t >
    0.6``: rtol 3e-5), and its forward difference spans 25 rows (1.00001e-3 in gamma, not
    1e-3) taken from a point up to 2e-5 away: rtol 2e-4 on ``dalpha_t``. Were a pair 24 rows
    apart, upstream's ``dalpha_t`` would be 4% off; the fixture's pairs are all 25 apart.
    """
    rows = MANIFEST["integral_table_rows"]
    assert [b - a for a, b in zip(rows[::2], rows[1::2])] == [25] * 4
    cfg = model().config
    u = GOLDEN["curriculum_draw_t"]
    n = u.shape[0]
    t = (1 - cfg.sampling_eps) * ((u / n + torch.arange(n) / n) % 1) + cfg.sampling_eps
    gamma = cfg.gamma_min + t.double() * (cfg.gamma_max - cfg.gamma_min)
    alpha, dalpha = duality_table(K, -5.0, -1.0).alpha_and_dalpha_dt(gamma, cfg.gamma_max - cfg.gamma_min)
    torch.testing.assert_close(alpha.float(), GOLDEN["curriculum_alpha"], rtol=3e-5, atol=0)
    torch.testing.assert_close(dalpha.float(), GOLDEN["curriculum_dalpha"], rtol=2e-4, atol=0)


def test_curriculum_loss_matches_upstream_under_its_draws(monkeypatch):
    """``DUO.nll`` in training mode (``curriculum.mode=simple``): Gaussian latent from the
    recorded noise, soft input ``softmax(w / tau)`` with tau = 1e-3, RB NELBO at
    ``z_t = argmax w`` with ``alpha_t = T(alpha_tilde)``. Dropout is switched off (the
    fixture ran the network in eval mode) so training mode is deterministic."""
    net = model(dropout=0.0, curriculum_steps=10).train()
    batch = Batch(GOLDEN["loss_x0"])
    draws = dict(rand=[GOLDEN["curriculum_draw_t"]], randn=[GOLDEN["curriculum_draw_noise"]])
    monkeypatch.setattr(torch, "rand", Replay(draws["rand"]))
    monkeypatch.setattr(torch, "randn", Replay(draws["randn"]))
    with torch.no_grad():
        per_token = net._curriculum_terms(batch)[0]
    assert torch.rand.done() and torch.randn.done()
    monkeypatch.setattr(torch, "rand", Replay(draws["rand"]))
    monkeypatch.setattr(torch, "randn", Replay(draws["randn"]))
    assert net.in_curriculum()
    loss = net.loss(batch)  # the public path, with gradients as in training
    assert torch.rand.done() and torch.randn.done()
    monkeypatch.undo()
    torch.testing.assert_close(per_token, GOLDEN["curriculum_per_token"], **CURRICULUM_TOL)
    torch.testing.assert_close(loss.detach().reshape(1), GOLDEN["curriculum_value"], **CURRICULUM_TOL)
    assert int(net.steps_trained) == 1


@pytest.mark.parametrize("removal, sampler_cls", [("ancestral", DuoAncestral), ("greedy", DuoGreedyTail)])
def test_sampler_matches_upstream_under_its_draws(removal, sampler_cls, monkeypatch):
    """``generate_samples`` (predictor ancestral, 6 steps, eps 1e-5, float64) with
    ``noise_removal`` ancestral / greedy, from the recorded uniform prior and Gumbel
    uniforms ``u`` (float64, ``(B, L, K)`` per draw). The code draws
    ``argmax(q / (1e-10 - log(u + 1e-10)))``; we draw ``argmax(q / -log1p(-v))``, so we are
    handed ``v = 1 - u``."""
    tag = f"sample_{removal}"
    draws = GOLDEN[f"{tag}_draws"]
    steps = MANIFEST["sampling_steps"]
    assert draws.shape[0] == steps + (removal == "ancestral")
    request = SampleRequest(steps=steps, num_samples=draws.shape[1], generator=torch.Generator().manual_seed(0))
    net = model()
    monkeypatch.setattr(torch, "randint", Replay([GOLDEN[f"{tag}_prior"]], size_at=2))
    monkeypatch.setattr(torch, "rand", Replay([1.0 - u for u in draws]))
    ours = sampler_cls().sample(net, request)
    assert torch.rand.done() and torch.randint.done()
    monkeypatch.undo()
    assert torch.equal(ours, GOLDEN[f"{tag}_samples"])


def test_small_preset_builds_the_upstream_key_list_and_shapes():
    """The released ``model=small`` DiT (12 x 768, cond 128, K = 50258) as the upstream
    class builds it: our loader must expect exactly these ``backbone.*`` names and shapes."""
    layout = json.loads((FIXTURE / "small_layout.json").read_text())
    with torch.device("meta"):
        ours = Duo(DuoConfig.from_preset("small"), gpt2_spec())
        fake = {k: torch.empty(shape) for k, shape in layout.items()}
    expected = {dit_weights.PREFIX + k: list(v.shape) for k, v in ours.network.state_dict().items()}
    assert expected == layout
    dit_weights.check_state_dict(ours.network, dit_weights.map_official_keys(fake))
