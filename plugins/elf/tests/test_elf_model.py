"""ELF model: config, sizes, encoder modes and masks, and the two-branch loss."""

from __future__ import annotations

import time

import pytest
import torch
from pydantic import ValidationError

from dlmbench.data import Batch, DataSpec
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.testing.devices import on_meta_default
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.model import ELF, build_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = DataSpec(vocab_size=50, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
COND = DataSpec(vocab_size=50, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=8)
SMALL = {"depth": 2, "hidden": 64, "heads": 2}


def tiny(spec: DataSpec = SPEC, seed: int = 0, **over) -> ELF:
    torch.manual_seed(seed)
    return ELF(ELFConfig.from_preset("tiny", **{**SMALL, **over}), spec)


def tokens(spec: DataSpec = SPEC, rows: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, spec.vocab_size, (rows, spec.seq_len), generator=g)


# config ---------------------------------------------------------------------------------
def test_presets_and_reference_defaults():
    ref = ELFConfig()
    assert (ref.depth, ref.hidden, ref.heads, ref.bottleneck_dim) == (12, 768, 12, 128)
    assert (ref.encoder, ref.encoder_name, ref.latent_scale) == ("frozen", "t5-small", 0.2)
    assert (ref.noise_scale, ref.t_mean, ref.t_std, ref.t_eps) == (2.0, -1.5, 0.8, 0.05)
    assert (ref.decode_prob, ref.decode_p_mean, ref.decode_p_std, ref.self_cond_prob) == (0.2, 0.8, 0.8, 0.5)
    assert (ref.sc_scale_min, ref.sc_scale_max, ref.label_drop_prob) == (0.5, 5.0, 0.1)
    assert ref.optimizer == "adamw" and ref.ema_decay == 0.9999 and ref.prediction == "x"
    for name, size in {"B": (12, 768, 12), "M": (24, 1056, 16), "L": (32, 1280, 16)}.items():
        c = ELFConfig.from_preset(name)
        assert (c.depth, c.hidden, c.heads) == size and c.encoder_name == "t5-small"
    t = ELFConfig.from_preset("tiny")
    assert t.encoder == "scratch" and t.encoder_name is None and t.latent_scale is None
    with pytest.raises(ConfigError):
        ELFConfig.from_preset("XL")


@pytest.mark.parametrize(
    "bad",
    [
        {"no_such_knob": 1},
        {"hidden": 100, "heads": 3},  # not divisible
        {"hidden": 96, "heads": 32},  # odd head size: no RoPE
        {"encoder": "frozen", "encoder_name": None},
        {"encoder": "learned", "encoder_name": "t5-small"},
        {"encoder": "bert"},
        {"prediction": "eps"},
        {"attention_backend": "flash"},
        {"optimizer": "sgd"},
        {"decode_prob": 1.5},
        {"t_eps": 0.0},
        {"sc_scale_min": 3.0, "sc_scale_max": 2.0},
        {"label_drop_prob": 1.0},
        {"latent_scale": -0.2},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        ELFConfig.from_preset("tiny", **bad)


def test_paper_scale_parameter_counts_on_meta():
    """ELF-B/M/L denoisers with 512-d T5-small latents, counted without allocating.

    With |V| = 32,100 (``len(tokenizer)`` of the T5 tokenizer, the reference's decode-head
    size) ELF-B has 104,579,940 parameters; the 104,594,304 a torch port counts is the same network
    with the 32,128-row T5 *embedding* size as |V|: the only difference is 28 decode-head
    rows x (512 weights + 1 bias) = 14,364. M and L match the paper's 342M and 652M.
    """
    counts = {}
    for name in ("B", "M", "L"):
        cfg = ELFConfig.from_preset(name)
        for vocab in (32_100, 32_128):
            with torch.device("meta"):
                net = build_denoiser(cfg, 512, vocab)
            counts[name, vocab] = sum(p.numel() for p in net.parameters())
    assert counts["B", 32_100] == 104_579_940
    assert counts["B", 32_128] == 104_594_304
    assert counts["B", 32_128] - counts["B", 32_100] == 28 * 513
    assert counts["M", 32_100] == 342_540_036
    assert counts["L", 32_100] == 652_103_332


# encoder --------------------------------------------------------------------------------
def test_network_is_the_denoiser_and_a_frozen_encoder_is_not_trained():
    model = tiny()
    assert model.network is model.denoiser
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.denoiser.parameters()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert model.denoiser.training and not model.encoder.training and not model.encoder.t5.training
    loss = model.loss(Batch(tokens()))
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())


def test_random_tiny_encoder_latents_are_non_degenerate():
    model = tiny()
    # a random T5 ends in a unit-weight RMSNorm: std ~1, not the pretrained 0.2
    scale = float(model.encoder.latent_scale)
    assert 0.8 < scale < 1.2
    x = model.encode(tokens(rows=32))
    assert abs(float(x.std()) - 1.0) < 0.1 and abs(float(x.mean())) < 0.2
    # different tokens at a position give clearly different latents
    flat = torch.nn.functional.normalize(x[:, 3], dim=-1)
    cos = flat @ flat.T
    off = cos[~torch.eye(32, dtype=torch.bool)]
    assert float(off.mean()) < 0.3
    # and they are contextual: changing one token moves its neighbours' latents
    a = tokens(rows=1)
    b = a.clone()
    b[0, 5] = 5 + (int(a[0, 5]) - 4) % 45
    xa, xb = model.encode(a), model.encode(b)
    assert float((xa[0, 4] - xb[0, 4]).abs().max()) > 1e-3
    assert float((xa[0, 5] - xb[0, 5]).norm()) > float((xa[0, 4] - xb[0, 4]).norm())


def test_encoder_modes():
    joint = tiny(encoder="joint")
    assert all(p.requires_grad for p in joint.encoder.parameters())
    n_enc = sum(p.numel() for p in joint.encoder.parameters())
    assert sum(p.numel() for p in joint.trainable_parameters()) == n_enc + sum(
        p.numel() for p in joint.denoiser.parameters()
    )
    joint.train()
    joint.loss(Batch(tokens())).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in joint.encoder.parameters())

    emb = tiny(encoder="token-embeddings")  # frozen Gaussian rows without a pretrained name
    t = tokens(rows=2)
    x = emb.encode(t)
    assert torch.allclose(x[0, 0], emb.encode(t[:1, :1])[0, 0])  # no contextualisation
    assert abs(float(emb.encoder.latent_scale) - 1.0) < 0.1  # estimated from the N(0, 1) table
    assert not any(p.requires_grad for p in emb.encoder.parameters())

    learned = tiny(encoder="learned")
    assert learned.denoiser.decode_head.unembed is None  # tied to the table
    x = learned.encode(t)
    assert torch.allclose(x.pow(2).mean(-1), torch.ones(2, SPEC.seq_len), atol=1e-5)  # renormalised rows
    learned.train()
    learned.loss(Batch(tokens())).backward()
    assert learned.encoder.table.grad is not None and float(learned.encoder.table.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in tiny(encoder="random").encoder.parameters())


def test_named_encoder_offline_fails_fast_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="t5-small"):
        ELF(ELFConfig.from_preset("B"), SPEC)
    assert time.perf_counter() - start < 30


def test_encoder_from_a_local_directory(tmp_path, monkeypatch):
    from transformers import T5EncoderModel

    from dlmbench_elf.encoder import tiny_t5_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ELFConfig.from_preset("tiny", **SMALL)
    t5 = T5EncoderModel(tiny_t5_config(cfg, 60)).eval()
    t5.save_pretrained(tmp_path)
    model = ELF(ELFConfig.from_preset("tiny", **SMALL, encoder="frozen", encoder_name=str(tmp_path), latent_scale=0.5), SPEC)
    t = tokens(rows=2)
    with torch.no_grad():
        expected = t5(input_ids=t).last_hidden_state / 0.5
    assert torch.allclose(model.encode(t), expected, atol=1e-5)
    assert not model.encoder.t5.training and float(model.encoder.latent_scale) == 0.5
    # encoder="random" with a name: that architecture, randomly initialised, frozen
    rnd = ELF(ELFConfig.from_preset("tiny", **SMALL, encoder="random", encoder_name=str(tmp_path)), SPEC)
    assert rnd.encoder.t5.config.vocab_size == 60 and not torch.allclose(rnd.encoder.raw(t), expected * 0.5)
    big = DataSpec(vocab_size=100, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
    with pytest.raises(ConfigError, match="vocabulary"):
        ELF(ELFConfig.from_preset("tiny", **SMALL, encoder="frozen", encoder_name=str(tmp_path)), big)


def test_conditional_encoder_masks():
    """Source sees only source; target sees all; dropped rows' targets do not see the source."""
    model = tiny(COND)
    P = COND.prefix_len
    a = tokens(COND, rows=2)
    b = a.clone()
    b[:, P:] = tokens(COND, rows=2, seed=9)[:, P:]  # same source, other target
    xa, xb = model.encode(a), model.encode(b)
    assert torch.allclose(xa[:, :P], xb[:, :P], atol=1e-6)  # no target leakage into the source
    # sampling re-encodes the source alone and gets the same latents
    assert torch.allclose(model.encode(a[:, :P], prefix_len=P), xa[:, :P], atol=1e-5)
    c = a.clone()
    c[:, :P] = tokens(COND, rows=2, seed=5)[:, :P]  # same target, other source
    xc = model.encode(c)
    assert float((xc[:, P:] - xa[:, P:]).abs().max()) > 1e-3  # targets condition on the source
    drop = torch.tensor([True, True])
    assert torch.allclose(model.encode(c, drop)[:, P:], model.encode(a, drop)[:, P:], atol=1e-6)


def test_pads_are_masked_as_keys_only():
    model = tiny()
    a = tokens(rows=1)
    a[0, 10:] = SPEC.pad_id
    x = model.encode(a)
    assert torch.isfinite(x).all()
    mask = model.encoder.attention_mask(a, 0, None)
    assert mask is not None and bool((mask[0, 0, :, 10:] < -1e30).all()) and bool((mask[0, 0, :, :10] == 0).all())
    assert model.encoder.attention_mask(tokens(rows=1), 0, None) is None  # nothing to mask: fast path


# loss -----------------------------------------------------------------------------------
def _grad_norm(module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_loss_branches_reach_their_heads():
    den = tiny(decode_prob=0.0)
    den.train()
    den.loss(Batch(tokens())).backward()
    assert _grad_norm(den.denoiser.x_head) > 0 and _grad_norm(den.denoiser.decode_head) == 0
    assert float(den.last_losses["ce"]) == 0.0 and float(den.last_losses["mse"]) > 0

    dec = tiny(decode_prob=1.0)
    dec.train()
    loss = dec.loss(Batch(tokens()))
    loss.backward()
    assert _grad_norm(dec.denoiser.decode_head) > 0 and _grad_norm(dec.denoiser.x_head) == 0
    value = float(loss.detach())
    assert value == pytest.approx(float(dec.last_losses["ce"])) and 2.0 < value < 12.0  # CE at init ~ log 50


def test_self_conditioning_costs_two_no_grad_passes():
    calls: list[tuple[int, bool]] = []
    model = tiny(decode_prob=0.0, self_cond_prob=1.0)
    model.denoiser.register_forward_pre_hook(lambda m, a: calls.append((a[0].shape[0], torch.is_grad_enabled())))
    model.train()
    model.loss(Batch(tokens(rows=6)))
    assert calls == [(6, False), (6, False), (6, True)]
    calls.clear()
    tiny_off = tiny(decode_prob=0.0, self_cond_prob=0.0)
    tiny_off.denoiser.register_forward_pre_hook(lambda m, a: calls.append((a[0].shape[0], torch.is_grad_enabled())))
    tiny_off.loss(Batch(tokens(rows=6)))
    assert calls == [(6, True)]


def test_loss_variants_are_finite_and_backpropagate():
    for spec, over in [
        (SPEC, {"prediction": "v"}),
        (COND, {}),
        (COND, {"label_drop_prob": 0.99, "decode_prob": 0.5}),
    ]:
        model = tiny(spec, **over)
        model.train()
        t = tokens(spec)
        mask = torch.ones_like(t, dtype=torch.bool)
        mask[:, -3:] = False
        for batch in (Batch(t), Batch(t, mask)):
            loss = model.loss(batch)
            assert torch.isfinite(loss)
            loss.backward()
    assert tiny(COND).decode_noise_scale == 1.0 and tiny().decode_noise_scale == 5.0


def test_default_sampler_follows_the_reference_per_task_kind():
    """SDE (gamma by step count, w 3) unconditional; ODE (w 1, input CFG 2) on conditional tasks."""
    from dlmbench.config import ModelEntry
    from dlmbench.plugins import build_registry, get_plugin_manager
    from dlmbench.build import build_sampler

    registry = build_registry(get_plugin_manager())
    uncond = build_sampler(ModelEntry(name="elf"), registry, conditional=False)
    cond = build_sampler(ModelEntry(name="elf"), registry, conditional=True)
    assert (uncond.name, uncond.config.gamma, uncond.config.w) == ("sde", "by-steps", 3.0)
    assert (cond.name, cond.config.w, cond.config.cfg_scale) == ("ode", 1.0, 2.0)
    named = build_sampler(ModelEntry(name="elf", sampler="sde"), registry, conditional=True)
    assert named.name == "sde"  # a named sampler always wins
    assert build_sampler(ModelEntry(name="mdlm"), registry, conditional=True).name == "ddpm_cache"


@pytest.mark.parametrize("encoder", ["frozen", "joint", "token-embeddings"])
def test_a_pretrained_t5_reads_the_task_through_its_own_tokenizer(encoder):
    """Encoders that keep a pretrained T5's weights read that T5's ids: its tokenizer, no mask."""
    from dlmbench.tokenizer import TokenizerRequest

    config = ELFConfig.from_preset("tiny", encoder=encoder, encoder_name="t5-small")
    assert ELF.tokenizer_request(config) == TokenizerRequest(name="t5-small", mask=False)


@pytest.mark.parametrize("encoder,name", [("scratch", "t5-small"), ("random", "t5-small"), ("scratch", None),
                                          ("learned", None)])
def test_other_encoders_read_the_task_tokenizer(encoder, name):
    """scratch and random take only a T5's config (even a named one), learned none: the task's
    own tokenizer, with its mask."""
    from dlmbench.tokenizer import TokenizerRequest

    config = ELFConfig.from_preset("tiny", encoder=encoder, encoder_name=name)
    assert ELF.tokenizer_request(config) == TokenizerRequest()


@pytest.mark.parametrize("spec,over", [(SPEC, {}), (COND, {}), (COND, {"source_layout": "packed"})],
                         ids=["unconditional", "fixed", "packed"])
def test_every_tensor_of_the_loss_is_made_on_the_data_device(spec, over):
    """The meta device stands in for an accelerator on the CPU suite: with torch's default
    device set to meta, CPU data still gives the CPU loss (both branches and self-conditioning
    taken), so every draw and position index is made on the data's device."""
    model = tiny(spec, decode_prob=0.5, self_cond_prob=1.0, label_drop_prob=0.5, **over).train()
    x = tokens(spec)
    expected, loss = on_meta_default(lambda: model.loss(Batch(x)), seed=1)
    assert float(model.last_losses["ce"]) > 0 and float(model.last_losses["mse"]) > 0
    assert loss.device.type == "cpu" and torch.equal(loss, expected)


def test_a_single_scored_position_is_the_whole_loss():
    """One scored position: the loss is its term divided by one position, the same number as
    the diagnostic of the branch its row took."""
    model = tiny(COND, decode_prob=0.5).train()
    x = tokens(COND, rows=4)
    for row in range(4):
        one = torch.zeros_like(x, dtype=torch.bool)
        one[row, 10] = True
        torch.manual_seed(2)
        with torch.no_grad():
            loss = model.loss(Batch(x, one))
        branch = model.last_losses["ce"] if float(model.last_losses["ce"]) > 0 else model.last_losses["mse"]
        assert float(loss) > 0 and torch.equal(loss, branch)


def _constant_rand(value: float):
    """A stand-in for ``torch.rand`` whose every draw is ``value``."""

    def rand(*size, generator=None, dtype=None, device=None, **_):
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        return torch.full(tuple(shape), value, dtype=dtype or torch.float32, device=device)

    return rand


def test_a_draw_equal_to_a_branch_probability_does_not_take_the_branch(monkeypatch):
    """Label dropping, the decode branch and self-conditioning are each taken iff their
    uniform draw u < p, probability exactly p on the float32 grid of u (``<=`` adds 2^-24).
    With every draw equal to p = 0.5 no branch is taken, so the loss equals the loss with
    all three probabilities 0; just above 0.5 every branch is taken and it differs. The
    weights are perturbed: at init the self-conditioning input is zero and unseen."""
    monkeypatch.setattr(torch, "rand", _constant_rand(0.5))
    x = tokens(COND, rows=4)

    def loss(p):
        model = tiny(COND, decode_prob=p, self_cond_prob=p, label_drop_prob=p).train()
        g = torch.Generator().manual_seed(1)
        torch.manual_seed(3)
        with torch.no_grad():
            for w in model.parameters():
                w.add_(0.1 * torch.randn(w.shape, generator=g))
            return model.loss(Batch(x))

    at_half, never = loss(0.5), loss(0.0)
    assert torch.equal(at_half, never)
    assert not torch.equal(loss(0.5 + 2**-20), never)


def test_the_packed_loss_scores_only_the_target_positions_the_batch_asks_for():
    """With packed rows the batch's loss mask still narrows the target: leaving one target
    position out of each row changes the loss, and a full mask equals no mask. Every row
    takes the decode branch, whose per-token cross-entropies differ (a fresh network's
    flow errors are alike at every position: its latents have one norm per token)."""
    model = tiny(COND, source_layout="packed", decode_prob=1.0).train()
    x = tokens(COND, rows=4)

    def loss(mask):
        torch.manual_seed(2)
        with torch.no_grad():
            return model.loss(Batch(x, mask))

    full = torch.ones_like(x, dtype=torch.bool)
    fewer = full.clone()
    fewer[:, -1] = False
    assert torch.equal(loss(full), loss(None))
    assert not torch.equal(loss(fewer), loss(full))


def test_every_denoiser_setting_of_the_config_reaches_the_denoiser():
    """``build_denoiser`` with none of the defaults equals the Denoiser built by hand from
    the same values: same parameters (token counts, frequency size, MLP width), the same
    forward (RoPE base, norm epsilon) and the same attention backend."""
    from dlmbench_elf.denoiser import Denoiser

    over = {"num_time_tokens": 2, "num_scale_tokens": 3, "num_mode_tokens": 5, "freq_dim": 32,
            "rope_base": 77.0, "mlp_hidden": 40, "norm_eps": 1e-3, "attention_backend": "math"}
    cfg = ELFConfig.from_preset("tiny", **{**SMALL, **over})
    torch.manual_seed(0)
    built = build_denoiser(cfg, 8, 50)
    torch.manual_seed(0)
    by_hand = Denoiser(d_latent=8, vocab_size=50, hidden=cfg.hidden, depth=cfg.depth, heads=cfg.heads,
                       bottleneck=cfg.bottleneck_dim, tied_unembedding=False, **over)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in by_hand.state_dict().items()}
    assert torch.equal(built.rotary.inv_freq, by_hand.rotary.inv_freq)  # a buffer: loading would copy it
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in by_hand.parameters():  # generic weights, so that every setting shows in the output
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        built.load_state_dict(by_hand.state_dict())
        z, sc = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
        t, w = torch.tensor([0.3, 0.7]), torch.tensor([1.0, 2.0])
        torch.testing.assert_close(built(z, sc, t, w, None)[0], by_hand(z, sc, t, w, None)[0], rtol=0, atol=0)
    assert {b.attn.backend for b in built.blocks} == {"math"}


def test_the_flow_and_branch_settings_of_the_config_reach_the_model():
    """The path's t_eps, the self-conditioning scale range and the decode noise scale are
    the config's, not their defaults; the per-branch diagnostics start empty."""
    model = tiny(COND, t_eps=0.2, sc_scale_min=1.5, sc_scale_max=2.5, decode_noise_scale=3.0)
    assert (model.path.noise_scale, model.path.t_eps) == (model.config.noise_scale, 0.2)
    assert (model.scale_dist.lo, model.scale_dist.hi) == (1.5, 2.5)
    assert model.decode_noise_scale == 3.0 and model.last_losses == {}


def test_encode_reads_the_prefix_length_it_is_given():
    """An explicit ``prefix_len`` overrides the task's: the encoder sees the source as that
    long (the samplers encode with the prefix they were given)."""
    model = tiny(COND).eval()
    x = tokens(COND, rows=2)
    with torch.no_grad():
        assert torch.equal(model.encode(x, prefix_len=COND.prefix_len), model.encode(x))
        assert not torch.equal(model.encode(x, prefix_len=2), model.encode(x))
