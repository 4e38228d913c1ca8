"""encoder="scratch": masked-LM pretraining of ELF's T5 encoder on the training split."""

from __future__ import annotations

import math

import pytest
import torch

from dlmbench.data import DataSpec
from dlmbench.training import fit
from dlmbench_elf import ELF, ELFConfig
from dlmbench_elf.pretrain import corrupt_for_mlm

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = DataSpec(vocab_size=20, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
COND = DataSpec(vocab_size=20, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4, prefix_len=6)


def counting(rows: int, seed: int = 0) -> torch.Tensor:
    """Rows 5 + (start + i) mod 15: every position is uniform over 15 tokens on its own
    (a context-free predictor gets 1/15), but fully determined by its neighbours."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 15, (rows, 1), generator=g)
    return 5 + (start + torch.arange(SPEC.seq_len)) % 15


def elf(spec: DataSpec = SPEC, **over) -> ELF:
    torch.manual_seed(0)
    small = dict(depth=1, hidden=32, heads=2, encoder_d_model=32, bottleneck_dim=16, encoder_pretrain_steps=150,
                 encoder_pretrain_batch_size=32, encoder_pretrain_lr=3e-3)
    cfg = ELFConfig.from_preset("tiny", **{**small, **over})
    return ELF(cfg, spec)


def test_bert_corruption_proportions_and_pads():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 1000, (400, 500), generator=g)
    tokens[:, -100:] = 0  # pads
    inputs, chosen = corrupt_for_mlm(tokens, 0.4, mask_id=4, vocab_size=1000, pad_id=0, generator=g)
    assert not chosen[:, -100:].any() and torch.equal(inputs[:, -100:], tokens[:, -100:])
    assert torch.equal(inputs[~chosen], tokens[~chosen])  # only chosen positions change
    n = chosen.sum().item()
    assert abs(n / (400 * 400) - 0.4) < 0.005
    masked = (inputs[chosen] == 4).float().mean().item()
    kept = (inputs[chosen] == tokens[chosen]).float().mean().item()
    # 10% random ids over 1000 tokens: 0.1 * (1 - 1/1000) differ, 0.1/1000 land on the original
    assert abs(masked - (0.8 + 0.1 / 1000)) < 0.005
    assert abs(kept - (0.1 + 0.1 / 1000)) < 0.005
    assert abs((1 - masked - kept) - 0.1 * (1 - 2 / 1000)) < 0.005


def test_pretraining_learns_context_and_freezes_the_encoder():
    model = elf()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    facts = model.prepare(counting(512), seed=0)
    # a context-free predictor of this corpus is right 1/15 of the time
    assert facts["final_mlm_accuracy"] > 0.5, facts
    assert facts["final_mlm_loss"] < 0.5 * math.log(15), facts
    assert facts["tokens"] == 150 * 32 * SPEC.seq_len and facts["steps"] == 150
    after = model.encoder.state_dict()
    assert not torch.equal(before["t5.shared.weight"], after["t5.shared.weight"])
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training
    # the latent scale is re-estimated on training rows: their latents have unit std
    latents = model.encode(counting(512)[:64])
    assert abs(float(latents.std()) - 1.0) < 1e-4
    assert facts["latent_scale"] == pytest.approx(float(model.encoder.latent_scale))


def test_pretraining_is_deterministic_given_the_seed_whatever_the_global_rng():
    a, b, c = elf(encoder_pretrain_steps=5), elf(encoder_pretrain_steps=5), elf(encoder_pretrain_steps=5)
    data = counting(64)
    a.prepare(data, seed=1)
    torch.manual_seed(123)
    torch.rand(7)
    b.prepare(data, seed=1)
    c.prepare(data, seed=2)
    sa, sb, sc = a.encoder.state_dict(), b.encoder.state_dict(), c.encoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_other_encoder_modes_prepare_nothing():
    model = elf(encoder="random")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.prepare(counting(64), seed=0) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_conditional_pretraining_uses_the_block_mask_the_flow_uses(monkeypatch):
    model = elf(COND, encoder_pretrain_steps=3)
    seen = []
    block_mask = model.encoder.attention_mask

    def spy(tokens, prefix_len, drop):
        seen.append(prefix_len)
        return block_mask(tokens, prefix_len, drop)

    monkeypatch.setattr(model.encoder, "attention_mask", spy)
    model.prepare(counting(64), seed=0)
    assert seen[:3] == [COND.prefix_len] * 3  # source queries never see the target


def test_fit_pretrains_first_and_a_fresh_model_loads_the_pretrained_encoder():
    model = elf(encoder_pretrain_steps=20)
    report = fit(model, counting(256), batch_size=16, steps=3, seed=0)
    assert report.prepared["tokens"] == 20 * 32 * SPEC.seq_len
    fresh = elf(encoder_pretrain_steps=20)
    probe = counting(8, seed=3)
    assert not torch.allclose(fresh.encode(probe), model.encode(probe))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.encode(probe), model.encode(probe))
    # fitting a loaded checkpoint again keeps the encoder its flow was trained on
    again = fit(fresh, counting(256, seed=1), batch_size=16, steps=2, seed=5)
    assert again.prepared == {}
    assert torch.equal(fresh.encode(probe), model.encode(probe))
