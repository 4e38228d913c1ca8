"""dlmbench.flops against FLOPs counted by hand from the AR tiny config."""

from __future__ import annotations

import pytest
import torch

from dlmbench.builtin.ar import AR, ARConfig
from dlmbench.builtin.ar_sampler import Ancestral
from dlmbench.data import Batch, DataSpec
from dlmbench.flops import count_flops, flops_by_op, forward_flops, network_inputs, sample_flops, train_step_flops

SPEC = DataSpec(vocab_size=445, seq_len=32, pad_id=0, bos_id=2, eos_id=3, mask_id=4)


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return AR(ARConfig.from_preset("tiny"), SPEC).eval()


def hand_count(cfg: ARConfig, vocab: int, batch: int, length: int) -> int:
    """2 x (matmul weights) x tokens + dense attention (QK^T and AV) + the output head."""
    C, L = cfg.n_embd, cfg.n_layer
    per_layer_weights = 3 * C * C + C * C + cfg.mlp_ratio * C * C + cfg.mlp_ratio * C * C  # qkv, proj, fc, proj
    tokens = batch * length
    linear = 2 * per_layer_weights * L * tokens
    attention = L * 2 * (2 * batch * length * length * C)  # QK^T and AV over all heads
    head = 2 * C * vocab * tokens
    return linear + attention + head


@pytest.mark.parametrize("batch", [1, 4])
def test_ar_forward_matches_hand_count(ar, batch):
    cfg = ar.config
    assert forward_flops(ar, batch, sampler=Ancestral()) == hand_count(cfg, SPEC.vocab_size, batch, SPEC.seq_len)


def test_ar_inputs_are_full_length(ar):
    # the sampler decodes one token per call from a KV cache: the capture falls back to
    # the full-length call inside the loss
    args, kwargs = network_inputs(ar, Ancestral(), 3)
    assert tuple(args[0].shape) == (3, SPEC.seq_len)
    assert args[1] is None and not kwargs


def test_cpu_attention_is_counted(ar):
    args, kwargs = network_inputs(ar, None, 2)
    ops = flops_by_op(ar.network, *args, **kwargs)
    attn = {k: v for k, v in ops.items() if "attention" in k}
    C, L, T = ar.config.n_embd, ar.config.n_layer, SPEC.seq_len
    assert sum(attn.values()) == L * 2 * (2 * 2 * T * T * C)


def test_shorter_length_through_a_temporary_spec(ar):
    assert forward_flops(ar, 2, seq_len=16) == hand_count(ar.config, SPEC.vocab_size, 2, 16)
    assert ar.spec.seq_len == SPEC.seq_len  # restored


def test_count_flops_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(torch.mm, a, b) == 2 * 8 * 16 * 4


def test_sample_and_train_step_flops(ar):
    batch = 2
    per_token_call = sample_flops(ar, Ancestral(), steps=1, batch_size=batch)
    assert per_token_call > 0
    # 32 cached one-token calls cost less than 32 full-length forwards
    assert per_token_call < SPEC.seq_len * hand_count(ar.config, SPEC.vocab_size, batch, SPEC.seq_len)
    tokens = torch.randint(5, SPEC.vocab_size, (batch, SPEC.seq_len))
    fwd = hand_count(ar.config, SPEC.vocab_size, batch, SPEC.seq_len)
    C, L, T = ar.config.n_embd, ar.config.n_layer, SPEC.seq_len
    attn = L * 2 * (2 * batch * T * T * C)
    # matmuls: backward = grad input + grad weight = 2x forward; PyTorch counts the
    # attention backward as 5 matmuls (scores recomputed) = 2.5x its forward
    assert train_step_flops(ar, Batch(tokens)) == 3 * (fwd - attn) + 3.5 * attn
    assert all(p.grad is None for p in ar.parameters())
