"""MDLM against golden outputs of the authors' own code (``kuleshov-group/mdlm@c112c52``).

``tests/fixtures/golden/mdlm/`` holds a tiny DiT in the released checkpoint layout and what
the upstream code computed with it (``make_fixtures.py`` there, run out of tree; its README
says how). Every test loads the fixture through :func:`load_official`, the path the
released ``kuleshov-group/mdlm-owt`` weights take, and feeds our code the inputs and the
random draws the upstream code used.

Tolerances: everything runs in fp32 on CPU (our DiT uses bf16 blocks on CUDA only), so
values agree to float rounding: ``rtol = atol = 1e-5``, where the largest differences seen
are 1.4e-6 on logits of size up to 5.4 and 3.8e-6 on NELBO terms of size up to 13 (the
upstream attention runs through the flash-attn stand-in of the fixture's generator,
summing in another order than SDPA). Sampled tokens must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench.nn import dit_weights
from dlmbench_mdlm import MDLM, MDLMConfig, MDLMDDPM, MDLMDDPMCache, gpt2_spec, load_official

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "golden" / "mdlm"
GOLDEN = load_file(str(FIXTURE / "golden.safetensors"))
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
K, MASK, L = 50, 49, 16
SPEC = DataSpec(vocab_size=K, seq_len=L, pad_id=0, bos_id=0, eos_id=0, mask_id=MASK)
TOL = dict(rtol=1e-5, atol=1e-5)

pytestmark = pytest.mark.usefixtures("one_thread")


def model(**overrides) -> MDLM:
    return load_official(FIXTURE, spec=SPEC, **overrides)


class Replay:
    """Stands in for ``torch.rand``: hands out the recorded draws in order, each only to a
    call asking for that shape, and checks that every draw was used."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws = list(draws)

    def __call__(self, *size, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        assert self.draws, f"an unexpected extra draw of shape {size}"
        draw = self.draws.pop(0)
        assert tuple(size) == tuple(draw.shape), f"draw of shape {size}, upstream drew {tuple(draw.shape)}"
        return draw.to(kwargs.get("dtype") or draw.dtype).clone()

    def done(self) -> bool:
        return not self.draws


def test_the_fixture_is_the_upstream_commit_our_code_follows():
    assert MANIFEST["commit"].startswith("c112c52") and MANIFEST["upstream"] == "kuleshov-group/mdlm"
    net = model()
    cfg = net.config
    assert (cfg.hidden_size, cfg.n_blocks, cfg.n_heads, cfg.cond_dim, cfg.dropout) == (32, 2, 2, 16, 0.1)
    assert cfg.time_conditioning is False and not net.training


def test_backbone_logits_match_upstream():
    ids, sigma = GOLDEN["backbone_ids"], GOLDEN["backbone_sigma"]
    with torch.no_grad():
        ours = model().network(ids, sigma)
    ref = GOLDEN["backbone_logits"]
    assert ref.std() > 0.3  # the fixture's perturbed adaLN/output layers give non-trivial logits
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_subs_log_probs_match_upstream(time_conditioning):
    """``Diffusion.forward``: sigma zeroed without time conditioning (the released model),
    ``sigma(t)`` of the log-linear schedule with it."""
    ids, t = GOLDEN["backbone_ids"], GOLDEN["subs_t"]
    key = "subs_log_probs_time_conditioned" if time_conditioning else "subs_log_probs"
    with torch.no_grad():
        ours = model(time_conditioning=time_conditioning).log_probs(ids, t)
    torch.testing.assert_close(ours, GOLDEN[key], **TOL)
    assert not torch.allclose(GOLDEN["subs_log_probs"], GOLDEN["subs_log_probs_time_conditioned"])


def _loss_terms(net: MDLM, tag: str, monkeypatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = Batch(GOLDEN["loss_x0"])
    draws = [GOLDEN[f"{tag}_draw_t"], GOLDEN[f"{tag}_draw_mask"]]
    results = []
    with torch.no_grad():
        for call in (lambda: net.token_losses(batch), lambda: net.loss(batch), lambda: net.nelbo(batch)):
            monkeypatch.setattr(torch, "rand", Replay(draws))
            results.append(call())
            assert torch.rand.done()
    monkeypatch.undo()
    (per_token, scored), loss, nelbo = results
    assert bool(scored.all())
    return per_token, loss, nelbo


def test_continuous_time_loss_matches_upstream_under_its_draws(monkeypatch):
    """``Diffusion._loss`` (T = 0): antithetic t from the recorded uniforms, masks from
    the recorded uniforms, ``-log p * dsigma / expm1(sigma)`` averaged over all tokens."""
    per_token, loss, nelbo = _loss_terms(model(), "loss_T0", monkeypatch)
    ref = GOLDEN["loss_T0_nlls"]
    torch.testing.assert_close(per_token, ref, **TOL)
    torch.testing.assert_close(loss.reshape(1), GOLDEN["loss_T0_value"], **TOL)
    torch.testing.assert_close(nelbo, ref.sum(-1), **TOL)
    assert float(loss) == pytest.approx(MANIFEST["scalars"]["loss_T0"], rel=1e-5)


def test_discrete_time_loss_matches_upstream_where_upstream_is_finite(monkeypatch):
    """``_d3pm_loss`` with T = 4. The recorded times snap to t = 1/4, 1/2, 3/4, 1.

    Two upstream quirks show here, both at the edges of the grid: at t = 1/T its second
    term divides 0 by 0 (``x_theta_at_m / (t - dt)`` with ``x_theta_at_m = 0`` under
    SUBS), so the whole row is NaN, which we do not reproduce (our weight is 1/t); at
    t = 1 it clamps t to 1 - 1e-4 in the weight, so its row is ours / (1 - 1e-4).
    """
    per_token, loss, _ = _loss_terms(model(T=4), "loss_T4", monkeypatch)
    ref = GOLDEN["loss_T4_nlls"]
    n = ref.shape[0]
    u = GOLDEN["loss_T4_draw_t"]
    t = (1 - 1e-3) * ((u / n + torch.arange(n) / n) % 1) + 1e-3
    t_snapped = (t * 4).floor() / 4 + 0.25
    assert t_snapped.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert bool(ref[0].isnan().all()) and bool(per_token.isfinite().all())
    torch.testing.assert_close(per_token[1:3], ref[1:3], **TOL)
    torch.testing.assert_close(per_token[3], ref[3] * (1 - 1e-4), **TOL)
    assert loss.isfinite()


@pytest.mark.parametrize("name, sampler_cls", [("ddpm_cache", MDLMDDPMCache), ("ddpm", MDLMDDPM)])
def test_sampler_matches_upstream_under_its_draws(name, sampler_cls, monkeypatch):
    """``Diffusion._sample`` (6 steps, eps 1e-5, noise removal) under its recorded Gumbel
    uniforms ``u`` (float32, ``(B, L, K)`` per step). The code draws
    ``argmax(q / (1e-10 - log(u + 1e-10)))`` over every position; we draw
    ``argmax(q / -log1p(-v))`` over the masked ones only, so we are handed ``v = 1 - u`` at
    the positions still masked before each step (the recorded trajectory)."""
    tag = f"sample_{name}"
    draws, trajectory = GOLDEN[f"{tag}_draws"], GOLDEN[f"{tag}_trajectory"]
    replay = []
    for u, x in zip(draws, trajectory):
        todo = x == MASK
        if bool(todo.any()):
            replay.append(1.0 - u[todo].double())
    net = model()
    request = SampleRequest(steps=draws.shape[0], num_samples=draws.shape[1],
                            generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch, "rand", Replay(replay))
    ours = sampler_cls().sample(net, request)
    assert torch.rand.done()
    monkeypatch.undo()
    assert bool((trajectory[0] == MASK).all()) and not bool((GOLDEN[f"{tag}_samples"] == MASK).any())
    assert torch.equal(ours, GOLDEN[f"{tag}_samples"])


def test_small_preset_builds_the_upstream_key_list_and_shapes():
    """The released ``model=small`` DiT (12 x 768, cond 128, K = 50258), as the upstream
    class builds it: our loader must expect exactly these ``backbone.*`` names and shapes."""
    layout = json.loads((FIXTURE / "small_layout.json").read_text())
    with torch.device("meta"):
        ours = MDLM(MDLMConfig.from_preset("small"), gpt2_spec())
        fake = {k: torch.empty(shape) for k, shape in layout.items()}
    expected = {dit_weights.PREFIX + k: list(v.shape) for k, v in ours.network.state_dict().items()}
    assert expected == layout
    dit_weights.check_state_dict(ours.network, dit_weights.map_official_keys(fake))
