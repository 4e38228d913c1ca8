"""ELF's conditional layout (``source_layout: packed``) against a hand-built example of the
reference's rows (``lillian039/ELF@b29d883 src/utils/data_utils.py`` collate_fn,
``src/utils/encoder_utils.py`` build_self_attn_cond_masks, ``src/train_step.py`` loss mask,
``src/generation.py`` shift_left), and the fixed layout left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file

from dlmbench.data import Batch, DataSpec, SampleRequest
from dlmbench.nfe import count_nfe
from dlmbench_elf import layout
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.model import ELF
from dlmbench_elf.official import load_official, t5_spec
from dlmbench_elf.samplers import ODESampler, SDESampler

pytestmark = pytest.mark.usefixtures("one_thread")

E = 3  # EOS
COND = DataSpec(vocab_size=20, seq_len=8, pad_id=0, bos_id=2, eos_id=E, mask_id=4, prefix_len=4)
WIDE = DataSpec(vocab_size=20, seq_len=8, pad_id=0, bos_id=2, eos_id=E, mask_id=4, prefix_len=5)

# dlmbench's fixed rows [source EOS-padded to 4 | target EOS-padded to 4] ...
FIXED = torch.tensor([
    [10, 11, E, E, 12, 13, 14, E],  # source 2, target 3
    [10, 11, 15, E, 16, E, E, E],  # source 3, target 1
    [17, E, E, E, E, E, E, E],  # source 1, empty target
])
# ... and the reference's rows: source, target right after it, EOS padding to 8
PACKED = torch.tensor([
    [10, 11, 12, 13, 14, E, E, E],
    [10, 11, 15, 16, E, E, E, E],
    [17, E, E, E, E, E, E, E],
])
SOURCE_LEN, VALID_LEN = [2, 3, 1], [5, 4, 1]
# where each packed position comes from in the fixed row
INDEX = [[0, 1, 4, 5, 6, 7, 2, 3],
         [0, 1, 2, 4, 5, 6, 7, 3],
         [0, 4, 5, 6, 7, 1, 2, 3]]


def allowed(c: int, v: int, drop: bool = False) -> list[list[int]]:
    """One row's T5 mask written out: (query, key) 1 = attends."""
    src = [1] * c + [0] * (8 - c)
    rows = [src] * c  # source queries: the source keys
    other = [0] * c + [1] * (v - c) + [0] * (8 - v) if drop else [1] * v + [0] * (8 - v)
    return rows + [other] * (8 - c)


def test_allowed_writes_out_the_reference_mask():
    # the helper itself, spelled out for the first row (c = 2, v = 5)
    assert allowed(2, 5) == [[1, 1, 0, 0, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 1, 0, 0, 0]] * 6
    assert allowed(2, 5, drop=True) == [[1, 1, 0, 0, 0, 0, 0, 0]] * 2 + [[0, 0, 1, 1, 1, 0, 0, 0]] * 6
    assert allowed(1, 1, drop=True) == [[1, 0, 0, 0, 0, 0, 0, 0]] + [[0] * 8] * 7


def elf(spec: DataSpec = COND, seed: int = 0, **over) -> ELF:
    torch.manual_seed(seed)
    cfg = ELFConfig.from_preset("tiny", **{"depth": 2, "hidden": 32, "heads": 2, "encoder_d_model": 16,
                                           "bottleneck_dim": 16, "encoder": "random", "source_layout": "packed",
                                           **over})
    model = ELF(cfg, spec)
    with torch.no_grad():  # a non-zero x head, so every output depends on the inputs
        model.denoiser.x_head.weight.copy_(torch.randn(model.denoiser.x_head.weight.shape,
                                                       generator=torch.Generator().manual_seed(seed)) * 0.05)
    return model.eval()


# --- the layout, by hand ----------------------------------------------------------------------
def test_pack_moves_the_source_padding_to_the_end():
    rows = layout.pack(FIXED, 4, E)
    assert torch.equal(rows.tokens, PACKED)
    assert rows.source_len.tolist() == SOURCE_LEN and rows.valid_len.tolist() == VALID_LEN
    assert rows.index.tolist() == INDEX
    assert rows.source.int().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0],
                                          [1, 0, 0, 0, 0, 0, 0, 0]]
    # a source or target with no EOS (it fills its side) keeps its full width
    full = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    rows = layout.pack(full, 4, E)
    assert torch.equal(rows.tokens, full) and (rows.source_len.item(), rows.valid_len.item()) == (4, 8)


def test_loss_covers_every_position_after_the_source():
    rows = layout.pack(FIXED, 4, E)
    every = torch.ones_like(FIXED, dtype=torch.bool)
    assert layout.scored(rows, every, 4).int().tolist() == [
        [0, 0, 1, 1, 1, 1, 1, 1],  # the target and its EOS, then the moved source padding
        [0, 0, 0, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1],
    ]
    # a batch.loss_mask narrows the target where it now lies; the moved padding stays scored
    only = torch.zeros_like(every)
    only[:, 5] = True  # the target's second position in the fixed layout
    assert layout.scored(rows, only, 4).int().tolist() == [
        [0, 0, 0, 1, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 0, 0, 1],
        [0, 0, 1, 0, 0, 1, 1, 1],
    ]


def test_encoder_mask_is_the_reference_block_mask():
    c, v = torch.tensor(SOURCE_LEN), torch.tensor(VALID_LEN)
    got = layout.encoder_allowed(c, v, 8)
    assert got.int().tolist() == [allowed(2, 5), allowed(3, 4), allowed(1, 1)]
    dropped = layout.encoder_allowed(c, v, 8, torch.tensor([True, False, True]))
    assert dropped.int().tolist() == [allowed(2, 5, True), allowed(3, 4), allowed(1, 1, True)]
    # as the additive mask the T5 gets: 0 where allowed, the dtype's minimum elsewhere
    model = elf()
    additive = model.encoder.packed_attention_mask(PACKED, (c, v), None)
    assert additive.shape == (3, 1, 8, 8)
    assert torch.equal(additive[:, 0] == 0, got)
    assert bool((additive[:, 0][~got] == torch.finfo(additive.dtype).min).all())


def test_shift_back_takes_the_ids_right_after_each_source():
    ids = 100 + torch.arange(24).view(3, 8)
    assert layout.unpack_target(ids, torch.tensor(SOURCE_LEN), 4).tolist() == [
        [102, 103, 104, 105],
        [111, 112, 113, 114],
        [117, 118, 119, 120],
    ]
    assert layout.first_eos(FIXED[:, :4], E).tolist() == SOURCE_LEN


def test_the_layout_is_built_on_the_device_of_its_inputs():
    """The meta device stands in for an accelerator on the CPU suite: every position index
    is made on the device of the ids or lengths it is compared with (a CPU index raises)."""
    rows = layout.pack(FIXED.to("meta"), 4, E)
    assert rows.tokens.device.type == rows.index.device.type == rows.source_len.device.type == "meta"
    assert rows.source.device.type == "meta" and rows.source.shape == (3, 8)
    assert layout.encoder_allowed(rows.source_len, rows.valid_len, 8).device.type == "meta"
    target = layout.unpack_target(rows.tokens, rows.source_len, 4)
    assert target.device.type == "meta" and target.shape == (3, 4)


# --- the model reads it -----------------------------------------------------------------------
def test_loss_encodes_the_packed_rows_with_the_packed_mask(monkeypatch):
    model = elf(label_drop_prob=0.0)
    seen = {}
    forward = model.encoder.t5.forward

    def spy(input_ids, attention_mask=None, **kw):
        seen["ids"], seen["mask"] = input_ids, attention_mask
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(model.encoder.t5, "forward", spy)
    model.loss(Batch(FIXED))
    assert torch.equal(seen["ids"], PACKED)
    assert (seen["mask"][:, 0] == 0).int().tolist() == [allowed(2, 5), allowed(3, 4), allowed(1, 1)]


def test_packed_loss_sees_only_the_true_source_and_target():
    """The same pair stored with a 4- or a 5-wide source is the same packed row, so the packed
    loss is the same under the same draws; the fixed layout's is not."""
    narrow = torch.tensor([[10, 11, E, E, 12, 13, 14, E]])
    wide = torch.tensor([[10, 11, E, E, E, 12, 13, 14]])
    for layout_, same in (("packed", True), ("fixed", False)):
        losses = []
        for spec, row in ((COND, narrow), (WIDE, wide)):
            model = elf(spec, source_layout=layout_).train()
            torch.manual_seed(1)
            losses.append(model.loss(Batch(row.repeat(8, 1))))
        assert torch.equal(losses[0], losses[1]) == same, layout_


def test_a_task_without_a_source_ignores_the_option():
    spec = DataSpec(vocab_size=20, seq_len=8, pad_id=0, bos_id=2, eos_id=E, mask_id=4)
    assert not elf(spec).packed and elf().packed and not elf(source_layout="fixed").packed


def test_option_default_and_values():
    assert ELFConfig().source_layout == "fixed"
    assert ELFConfig(source_layout="packed").source_layout == "packed"
    with pytest.raises(ValidationError):
        ELFConfig(source_layout="variable")


# --- sampling -----------------------------------------------------------------------------------
PREFIX = FIXED[:, :4]


@pytest.mark.parametrize("sampler,nfe", [(ODESampler(), lambda n: 2 * n + 1), (SDESampler(), lambda n: n + 1)])
def test_packed_sampling_returns_the_fixed_layout_with_the_same_nfe(monkeypatch, sampler, nfe):
    model = elf()
    calls, decoded = [], {}
    predict, decode = model.predict, model.decode_logits

    def spy_predict(z, sc, t, w, mode=None):
        calls.append((z.clone(), sc.clone()))
        return predict(z, sc, t, w, mode)

    def spy_decode(hidden):
        logits = decode(hidden)
        decoded["ids"] = logits.argmax(-1)
        return logits

    monkeypatch.setattr(model, "predict", spy_predict)
    monkeypatch.setattr(model, "decode_logits", spy_decode)
    steps = 3
    req = SampleRequest(steps=steps, num_samples=3, generator=torch.Generator().manual_seed(0), prefix=PREFIX)
    with count_nfe(model) as counter:
        ids = sampler.sample(model, req)
    assert counter.per_sample(3) == nfe(steps) == sampler.max_nfe(steps, COND)
    assert ids.shape == (3, 8) and ids.dtype == torch.long
    assert torch.equal(ids[:, :4], PREFIX)  # the prefix, intact
    raw = decoded["ids"]  # the decode pass over the packed row
    assert torch.equal(ids[:, 4:], torch.stack([raw[0, 2:6], raw[1, 3:7], raw[2, 1:5]]))
    # the first pass: clean latents of the true source alone (its padding never seen), noise after it
    z0, sc0 = calls[0]
    z0, sc0 = z0[:3], sc0[:3]  # the conditional half of a batched input-CFG pass
    for r, c in enumerate(SOURCE_LEN):
        alone = model.encode(PREFIX[r:r + 1, :c], prefix_len=0)[0]
        torch.testing.assert_close(z0[r, :c], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sc0[r, :c], alone, rtol=1e-5, atol=1e-5)
        assert bool((sc0[r, c:] == 0).all()) and not bool((z0[r, c:] == 0).any())


def test_packed_generation_starts_right_after_the_true_source():
    """The same source stored 4 or 5 wide gets the same ids after it (same noise, grid and
    weights): generation depends on the true source, not on its padding width."""
    outs = []
    for spec, prefix in ((COND, torch.tensor([[10, 11, E, E]])), (WIDE, torch.tensor([[10, 11, E, E, E]]))):
        req = SampleRequest(steps=4, num_samples=1, generator=torch.Generator().manual_seed(3), prefix=prefix)
        outs.append(ODESampler().sample(elf(spec), req))
    narrow, wide = outs
    assert torch.equal(narrow[0, 4:7], wide[0, 5:8])


# --- rows with no EOS: packed is the fixed layout, so both match upstream --------------------------
FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "golden" / "elf"


MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
CKPT = FIXTURE / MANIFEST["checkpoint"]["path"]


def golden_model(prefix_len: int, source_layout: str | None, source: str | Path = CKPT) -> ELF:
    arch = MANIFEST["arch"]
    layout_ = {} if source_layout is None else {"source_layout": source_layout}
    return load_official(
        source, spec=t5_spec(arch["max_length"], prefix_len, arch["vocab_size"]),
        preset="B", encoder_name=str(FIXTURE / "t5"), cache=None, depth=arch["depth"], hidden=arch["hidden_size"],
        heads=arch["num_heads"], bottleneck_dim=arch["bottleneck_dim"], latent_scale=MANIFEST["latent_std"],
        latent_mean=MANIFEST["latent_mean"], **layout_)


def test_rows_without_eos_padding_are_the_same_in_both_layouts():
    """Upstream's golden De-En rows hold no EOS (a 6-token source fills its side), so the packed
    rows are the fixed ones: the loss and the samples (matched to upstream in
    test_elf_official.py) are bit for bit the same."""
    golden = load_file(str(FIXTURE / "golden.safetensors"))
    tokens, P = golden["loss_deen.tokens"], 6
    assert not bool((tokens == 1).any())
    results = []
    for name in ("fixed", "packed"):
        model = golden_model(P, name)
        torch.manual_seed(4)
        loss = model.loss(Batch(tokens))
        prefix = golden["sample_cond_ode.tokens"][:, :P]
        req = SampleRequest(steps=3, num_samples=3, generator=torch.Generator().manual_seed(0), prefix=prefix)
        results.append((loss, ODESampler().sample(model.eval(), req)))
    (loss_f, ids_f), (loss_p, ids_p) = results
    assert torch.equal(loss_f, loss_p) and torch.equal(ids_f, ids_p)


# --- the conditional configs use it ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["wmt14-de-en", "xsum"])
def test_reference_configs_use_the_packed_layout(name):
    config = yaml.safe_load((Path(__file__).resolve().parents[3] / "configs" / f"{name}.yaml").read_text())
    (entry,) = [m for m in config["models"] if m["name"] == "elf"]
    assert entry["options"]["source_layout"] == "packed"
    ELFConfig.from_preset(entry["preset"], **entry["options"])  # a valid option


def test_released_conditional_weights_read_the_packed_layout(monkeypatch):
    """ELF-B-de-en / -xsum were trained on packed rows: loading them by name packs, unless told
    otherwise; the OWT weights (no source) keep the default."""
    from dlmbench_elf import official

    monkeypatch.setattr(official, "_from_hub", lambda hub: CKPT)  # the fixture stands in for the hub file
    assert golden_model(6, None, "ELF-B-de-en").config.source_layout == "packed"
    assert golden_model(6, None, "ELF-B-xsum").config.source_layout == "packed"
    assert golden_model(6, "fixed", "ELF-B-de-en").config.source_layout == "fixed"
    assert golden_model(0, None, "ELF-B-owt").config.source_layout == "fixed"
    assert golden_model(6, None).config.source_layout == "fixed"  # a file of unknown origin
