"""The shared DiT backbone (dlmbench.nn.dit): layout, size and conditioning."""

from __future__ import annotations

import math

import pytest
import torch

from dlmbench.nn.dit import DiT, count_parameters, timestep_embedding
from dlmbench.nn.dit_config import DiTModelConfig

# The released checkpoints' keys and shapes (the ``backbone.*`` entries of the
# ``model.safetensors`` of kuleshov-group/mdlm-owt and s-sahoo/duo), in order.
SMALL_HEAD = [
    ("vocab_embed.embedding", (50258, 768)),
    ("sigma_map.mlp.0.weight", (128, 256)),
    ("sigma_map.mlp.0.bias", (128,)),
    ("sigma_map.mlp.2.weight", (128, 128)),
    ("sigma_map.mlp.2.bias", (128,)),
    ("rotary_emb.inv_freq", (32,)),
]
SMALL_BLOCK = [
    ("norm1.weight", (768,)),
    ("attn_qkv.weight", (2304, 768)),
    ("attn_out.weight", (768, 768)),
    ("norm2.weight", (768,)),
    ("mlp.0.weight", (3072, 768)),
    ("mlp.0.bias", (3072,)),
    ("mlp.2.weight", (768, 3072)),
    ("mlp.2.bias", (768,)),
    ("adaLN_modulation.weight", (4608, 128)),
    ("adaLN_modulation.bias", (4608,)),
]
SMALL_TAIL = [
    ("output_layer.norm_final.weight", (768,)),
    ("output_layer.linear.weight", (50258, 768)),
    ("output_layer.linear.bias", (50258,)),
    ("output_layer.adaLN_modulation.weight", (1536, 128)),
    ("output_layer.adaLN_modulation.bias", (1536,)),
]
SMALL_KEYS = SMALL_HEAD + [(f"blocks.{i}.{k}", s) for i in range(12) for k, s in SMALL_BLOCK] + SMALL_TAIL


def small_on_meta() -> DiT:
    with torch.device("meta"):
        return DiTModelConfig.from_preset("small").build_dit(50258)


def test_small_has_the_released_keys_shapes_and_order():
    net = small_on_meta()
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == SMALL_KEYS
    assert len([k for k, _ in net.named_parameters()]) == 130  # plus the one buffer


def test_small_parameter_count_is_169_6m():
    assert count_parameters(small_on_meta()) == 169_627_218


def test_mdlm_and_duo_small_presets_build_the_same_backbone():
    duo_plugin = pytest.importorskip("dlmbench_duo")
    Duo, DuoConfig = duo_plugin.Duo, duo_plugin.DuoConfig
    from dlmbench_mdlm import MDLM, MDLMConfig, gpt2_spec

    with torch.device("meta"):
        mdlm = MDLM(MDLMConfig.from_preset("small"), gpt2_spec())
        duo = Duo(DuoConfig.from_preset("small"), gpt2_spec())
    assert count_parameters(mdlm.network) == count_parameters(duo.network) == 169_627_218
    assert [k for k, _ in mdlm.network.state_dict().items()] == [k for k, _ in SMALL_KEYS]


def test_rotary_inv_freq_and_sinusoid_at_zero():
    net = DiT(16, hidden_size=64, n_blocks=1, n_heads=2)
    expected = 1.0 / 10_000 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)
    torch.testing.assert_close(net.rotary_emb.inv_freq, expected)
    phi0 = timestep_embedding(torch.zeros(2))
    assert phi0.shape == (2, 256)
    assert torch.equal(phi0[:, :128], torch.ones(2, 128)) and torch.equal(phi0[:, 128:], torch.zeros(2, 128))


def test_fresh_network_outputs_zero_logits_and_embedding_init_is_kaiming():
    torch.manual_seed(0)
    net = DiT(50, hidden_size=64, n_blocks=2, n_heads=4).eval()
    out = net(torch.randint(0, 50, (3, 7)), torch.rand(3))
    assert out.shape == (3, 7, 50) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-zero and zero output linear
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt 5) on a [K, D] matrix: U(-1/sqrt(D), 1/sqrt(D))
    emb = net.vocab_embed.embedding
    assert float(emb.abs().max()) <= bound and float(emb.abs().max()) > 0.8 * bound


def perturbed(net: DiT, seed: int = 0) -> DiT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_soft_one_hot_input_equals_hard_ids():
    torch.manual_seed(0)
    net = perturbed(DiT(30, hidden_size=32, n_blocks=2, n_heads=2))
    ids = torch.randint(0, 30, (2, 9))
    sigma = torch.rand(2)
    soft = torch.nn.functional.one_hot(ids, 30).float() / 1e-3  # logits; softmax is one-hot
    torch.testing.assert_close(net(soft, sigma), net(ids, sigma), rtol=1e-5, atol=1e-5)


def test_time_conditioning_changes_the_output_and_attention_is_bidirectional():
    torch.manual_seed(0)
    net = perturbed(DiT(30, hidden_size=32, n_blocks=2, n_heads=2))
    ids = torch.randint(0, 30, (1, 8))
    a = net(ids, torch.zeros(1))
    assert not torch.allclose(a, net(ids, torch.ones(1)))
    later = ids.clone()
    later[0, -1] = (later[0, -1] + 1) % 30
    assert not torch.allclose(a[0, 0], net(later, torch.zeros(1))[0, 0])  # position 0 sees the last


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_attention_backends_agree(backend):
    torch.manual_seed(0)
    net = perturbed(DiT(30, hidden_size=32, n_blocks=2, n_heads=2, attention_backend="math"))
    ids, sigma = torch.randint(0, 30, (2, 8)), torch.rand(2)
    reference = net(ids, sigma)
    for block in net.blocks:
        block.attention_backend = backend
    torch.testing.assert_close(net(ids, sigma), reference, rtol=1e-5, atol=1e-5)


def test_presets_match_the_shared_sizes():
    small, tiny = DiTModelConfig.from_preset("small"), DiTModelConfig.from_preset("tiny")
    assert (small.hidden_size, small.n_blocks, small.n_heads, small.dropout) == (768, 12, 12, 0.1)
    assert (tiny.hidden_size, tiny.n_blocks, tiny.n_heads, tiny.cond_dim) == (128, 2, 4, 128)


def test_build_dit_follows_every_architecture_field():
    config = DiTModelConfig(hidden_size=32, n_blocks=3, n_heads=2, cond_dim=16, mlp_ratio=2, dropout=0.25,
                            attention_backend="math", bf16=False)
    net = config.build_dit(11)
    assert net.vocab_embed.embedding.shape == (11, 32) and len(net.blocks) == 3
    block = net.blocks[0]
    assert (block.n_heads, block.attention_backend, block.dropout) == (2, "math", 0.25)
    assert block.adaLN_modulation.in_features == 16 and block.mlp[0].out_features == 64
    assert net.bf16 is False
