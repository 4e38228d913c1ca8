"""Loading released Duo weights (``s-sahoo/duo``, ``s-sahoo/duo-distilled``) by key
mapping, from a checkpoint written in the published layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dlmbench.data import DataSpec
from dlmbench.errors import CheckpointError, HubUnavailableError
from dlmbench.nn.dit import DiT
from dlmbench_duo import Duo, DuoConfig, gpt2_spec, load_official

SPEC = DataSpec(vocab_size=40, seq_len=16, pad_id=0, bos_id=2, eos_id=3, mask_id=4)


def released_layout(path, causal=False, drop=None) -> DiT:
    torch.manual_seed(0)
    net = DiT(40, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=128)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {f"backbone.{k}": v.detach().float().contiguous() for k, v in net.state_dict().items()}
    if drop:
        del state[drop]
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["DUO"],
        "auto_map": {"AutoConfig": "config.DUOConfig", "AutoModelForMaskedLM": "model.DUO"},
        "model_type": "duo",
        "vocab_size": 40,
        "model_length": 16,
        "causal": causal,
        "hidden_dim": 32,
        "cond_dim": 128,
        "n_blocks": 2,
        "n_heads": 2,
        "dropout": 0.1,
        "var_min": True,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.py").write_text("raise RuntimeError('remote code must never run')\n")
    return net.eval()


def test_loads_the_released_layout_time_conditioned(tmp_path):
    source = released_layout(tmp_path / "duo")
    model = load_official(tmp_path / "duo", spec=SPEC)
    assert isinstance(model, Duo) and model.config.time_conditioning and not model.training
    assert (model.config.hidden_size, model.config.n_blocks, model.config.n_heads) == (32, 2, 2)
    ids = torch.randint(0, 40, (3, 16))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    sigma = model.conditioning(t)
    torch.testing.assert_close(sigma.double(), -torch.log(1 - (1 - 1e-3) * t), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.network(ids, sigma), source(ids, sigma), rtol=0, atol=0)


def test_the_released_weights_hook_passes_source_spec_and_options_on(tmp_path, monkeypatch):
    """``Duo.load_weights`` (what ``dlmbench.released`` calls for a model entry with weights)
    loads ``source`` for the task's ``spec`` with the entry's ``options``. Catches dropping any
    of them: the default hub source is fetched instead (offline here), a GPT-2 spec is built
    instead of the task's, or the options are ignored."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    source = released_layout(tmp_path / "duo")
    model = Duo.load_weights(str(tmp_path / "duo"), SPEC, {"gamma_min": -3.0, "sampling_eps": 0.01},
                             tmp_path / "cache")
    assert isinstance(model, Duo) and model.spec == SPEC
    assert model.config.gamma_min == -3.0 and model.config.sampling_eps == 0.01
    ids = torch.randint(0, 40, (2, 16))
    sigma = model.conditioning(torch.tensor([0.3, 0.7], dtype=torch.float64))
    torch.testing.assert_close(model.network(ids, sigma), source(ids, sigma), rtol=0, atol=0)


def test_causal_and_incomplete_checkpoints_are_refused(tmp_path):
    released_layout(tmp_path / "ar", causal=True)
    with pytest.raises(CheckpointError, match="causal"):
        load_official(tmp_path / "ar", spec=SPEC)
    released_layout(tmp_path / "partial", drop="backbone.output_layer.adaLN_modulation.bias")
    with pytest.raises(CheckpointError, match=r"missing keys \['backbone.output_layer.adaLN_modulation.bias'\]"):
        load_official(tmp_path / "partial", spec=SPEC)


def test_small_preset_matches_the_released_size():
    with torch.device("meta"):
        model = Duo(DuoConfig.from_preset("small"), gpt2_spec())
    assert sum(p.numel() for p in model.network.parameters()) == 169_627_218


def test_hub_names_fail_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(HubUnavailableError, match="local directory"):
        load_official("dlmbench-tests/no-such-duo")
