"""Loading released MDLM weights by key mapping, without remote code.

The test writes a checkpoint in exactly the published layout (``backbone.*`` keys, fp32
safetensors, the HF ``config.json`` fields) at a small size, and checks the full-size
key list and shapes separately on the meta device.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from dlmbench.data import DataSpec
from dlmbench.errors import CheckpointError, HubUnavailableError
from dlmbench.nn import dit_weights
from dlmbench.nn.dit import DiT
from dlmbench_mdlm import MDLM, MDLMConfig, gpt2_spec, load_official

SPEC = DataSpec(vocab_size=50, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
SMALL = dict(hidden_size=64, n_blocks=2, n_heads=4, cond_dim=128)


def released_layout(path, vocab_size=50, config_extra=None, mutate=None) -> DiT:
    """Write ``model.safetensors`` + ``config.json`` as ``kuleshov-group/mdlm-owt`` has them."""
    torch.manual_seed(0)
    net = DiT(vocab_size, **SMALL, dropout=0.1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {f"backbone.{k}": v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    if mutate is not None:
        mutate(state)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "model_type": "mdlm",
        "vocab_size": vocab_size,
        "model_length": 16,
        "hidden_dim": 64,
        "cond_dim": 128,
        "n_blocks": 2,
        "n_heads": 4,
        "dropout": 0.1,
        "time_conditioning": False,
        "torch_dtype": "float32",
        **(config_extra or {}),
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_mdlm.py").write_text("raise RuntimeError('remote code must never run')\n")
    return net.eval()


def test_loads_the_released_layout_and_reproduces_the_network(tmp_path):
    source = released_layout(tmp_path / "mdlm-owt")
    model = load_official(tmp_path / "mdlm-owt", spec=SPEC)
    cfg = model.config
    assert (cfg.hidden_size, cfg.n_blocks, cfg.n_heads, cfg.cond_dim) == (64, 2, 4, 128)
    assert cfg.time_conditioning is False and cfg.dropout == 0.1 and not model.training
    ids = torch.randint(0, 50, (2, 16))
    sigma = torch.zeros(2)
    torch.testing.assert_close(model.network(ids, sigma), source(ids, sigma), rtol=0, atol=0)
    # the model applies SUBS on top of the raw logits
    ids[:, :4] = SPEC.mask_id
    assert float(model.log_probs(ids, torch.full((2,), 0.5))[..., SPEC.mask_id].exp().max()) == 0.0


def test_the_released_weights_hook_passes_source_spec_and_options_on(tmp_path, monkeypatch):
    """``MDLM.load_weights`` (what ``dlmbench.released`` calls for a model entry with weights)
    loads ``source`` for the task's ``spec`` with the entry's ``options``. Catches dropping any
    of them: the default hub source is fetched instead (offline here), a GPT-2 spec is built
    instead of the task's, or the options are ignored."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    source = released_layout(tmp_path / "mdlm-owt")
    model = MDLM.load_weights(str(tmp_path / "mdlm-owt"), SPEC, {"T": 8, "sampling_eps": 0.01}, tmp_path / "cache")
    assert isinstance(model, MDLM) and model.spec == SPEC
    assert model.config.T == 8 and model.config.sampling_eps == 0.01
    ids, sigma = torch.randint(0, 50, (2, 16)), torch.zeros(2)
    torch.testing.assert_close(model.network(ids, sigma), source(ids, sigma), rtol=0, atol=0)


def test_a_bare_safetensors_file_uses_the_preset_and_overrides(tmp_path):
    released_layout(tmp_path / "repo")
    lonely = tmp_path / "elsewhere" / "weights.safetensors"
    lonely.parent.mkdir()
    lonely.write_bytes((tmp_path / "repo" / "model.safetensors").read_bytes())
    model = load_official(lonely, spec=SPEC, **SMALL)
    assert model.config.hidden_size == 64 and model.config.dropout == 0.1  # small preset's dropout


def published_keys() -> dict[str, tuple[int, ...]]:
    """The exact key list of the ``model.safetensors`` of ``kuleshov-group/mdlm-owt`` / ``s-sahoo/duo``."""
    keys = {
        "backbone.vocab_embed.embedding": (50258, 768),
        "backbone.sigma_map.mlp.0.weight": (128, 256),
        "backbone.sigma_map.mlp.0.bias": (128,),
        "backbone.sigma_map.mlp.2.weight": (128, 128),
        "backbone.sigma_map.mlp.2.bias": (128,),
        "backbone.rotary_emb.inv_freq": (32,),
    }
    for i in range(12):
        keys.update({
            f"backbone.blocks.{i}.norm1.weight": (768,),
            f"backbone.blocks.{i}.attn_qkv.weight": (2304, 768),
            f"backbone.blocks.{i}.attn_out.weight": (768, 768),
            f"backbone.blocks.{i}.norm2.weight": (768,),
            f"backbone.blocks.{i}.mlp.0.weight": (3072, 768),
            f"backbone.blocks.{i}.mlp.0.bias": (3072,),
            f"backbone.blocks.{i}.mlp.2.weight": (768, 3072),
            f"backbone.blocks.{i}.mlp.2.bias": (768,),
            f"backbone.blocks.{i}.adaLN_modulation.weight": (4608, 128),
            f"backbone.blocks.{i}.adaLN_modulation.bias": (4608,),
        })
    keys.update({
        "backbone.output_layer.norm_final.weight": (768,),
        "backbone.output_layer.linear.weight": (50258, 768),
        "backbone.output_layer.linear.bias": (50258,),
        "backbone.output_layer.adaLN_modulation.weight": (1536, 128),
        "backbone.output_layer.adaLN_modulation.bias": (1536,),
    })
    return keys


def test_published_full_size_key_list_is_accepted():
    """Every published key and shape, fp32, checked on the meta device."""
    with torch.device("meta"):
        model = MDLM(MDLMConfig.from_preset("small"), gpt2_spec())
        published = {k: torch.empty(s, dtype=torch.float32) for k, s in published_keys().items()}
    assert len(published) == 131
    assert list(dit_weights.map_official_keys(published)) == list(model.network.state_dict())
    dit_weights.check_state_dict(model.network, dit_weights.map_official_keys(published))
    del published["backbone.blocks.11.mlp.2.bias"]
    with pytest.raises(CheckpointError, match=r"blocks\.11\.mlp\.2\.bias"):
        dit_weights.check_state_dict(model.network, dit_weights.map_official_keys(published))


def drop_key(state):
    del state["backbone.blocks.1.attn_out.weight"]


def add_keys(state):
    state["backbone.blocks.9.norm1.weight"] = torch.ones(64)
    state["teacher.vocab_embed.embedding"] = torch.ones(50, 64)


def bad_shape(state):
    state["backbone.blocks.0.attn_qkv.weight"] = torch.zeros(100, 64)


@pytest.mark.parametrize(
    "mutate,words",
    [
        (drop_key, ["missing", "backbone.blocks.1.attn_out.weight"]),
        (add_keys, ["unexpected", "backbone.blocks.9.norm1.weight", "teacher.vocab_embed.embedding"]),
        (bad_shape, ["wrong shapes", "backbone.blocks.0.attn_qkv.weight", "(100, 64)", "(192, 64)"]),
    ],
)
def test_mismatched_checkpoints_are_refused_by_name(tmp_path, mutate, words):
    released_layout(tmp_path / "bad", mutate=mutate)
    with pytest.raises(CheckpointError) as info:
        load_official(tmp_path / "bad", spec=SPEC)
    for word in words:
        assert word in str(info.value)


def test_missing_inv_freq_is_tolerated(tmp_path):
    released_layout(tmp_path / "no-buffer", mutate=lambda s: s.pop("backbone.rotary_emb.inv_freq"))
    load_official(tmp_path / "no-buffer", spec=SPEC)


def test_wrong_vocabulary_and_corrupt_files_are_refused(tmp_path):
    released_layout(tmp_path / "repo")
    other = DataSpec(vocab_size=60, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)
    with pytest.raises(CheckpointError, match="vocab_embed.embedding"):
        load_official(tmp_path / "repo", spec=other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_official(tmp_path / "junk", spec=SPEC)
    with pytest.raises(CheckpointError, match="only safetensors"):
        load_official(tmp_path / "repo" / "config.json", spec=SPEC)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_official(tmp_path, spec=SPEC)


def test_hub_names_fail_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        load_official("dlmbench-tests/no-such-model")
    assert time.perf_counter() - start < 5


def test_hub_failures_without_network_or_library_are_hub_unavailable(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub = pytest.importorskip("huggingface_hub")

    def no_network(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(hub, "snapshot_download", no_network)
    with pytest.raises(HubUnavailableError, match="ConnectionError: no route to huggingface.co"):
        load_official("dlmbench-tests/no-such-model")
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(HubUnavailableError, match="not installed"):
        load_official("dlmbench-tests/no-such-model")
