"""Attention backends of the ELF denoiser: sdpa and xformers against references."""

from __future__ import annotations

import pytest
import torch

from dlmbench_elf.config import ELFConfig
from dlmbench_elf.model import build_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def _denoiser(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ELFConfig.from_preset("tiny", depth=2, hidden=64, heads=4, attention_backend="math")
    net = build_denoiser(cfg, d_latent=16, vocab_size=30)
    with torch.no_grad():  # leave the zero-initialised x head so its output is non-trivial
        net.x_head.weight.normal_(std=0.1)
    return net


def _inputs(batch: int = 3, length: int = 10, device: str = "cpu", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, length, 16, generator=g)
    sc = torch.randn(batch, length, 16, generator=g)
    t, w = torch.rand(batch, generator=g), 0.5 + 4.5 * torch.rand(batch, generator=g)
    mode = torch.tensor([0.0, 1.0, 0.0])[:batch]
    return [a.to(device) for a in (z, sc, t, w, mode)]


def test_sdpa_matches_the_math_reference_on_cpu():
    net = _denoiser().eval()
    args = _inputs()
    with torch.no_grad():
        ref = net(*args)
        net.set_attention_backend("sdpa")
        out = net(*args)
    assert torch.allclose(out.out, ref.out, atol=1e-5, rtol=1e-4)
    assert torch.allclose(out.hidden, ref.hidden, atol=1e-4, rtol=1e-4)


def test_prefix_is_not_rotated_and_positions_matter():
    net = _denoiser().eval()
    cos, sin = net._rope_tables(5, torch.device("cpu"))
    n = net.num_prefix
    assert n == 12 and cos.shape[0] == n + 5
    assert torch.equal(cos[:n], torch.ones_like(cos[:n])) and torch.equal(sin[:n], torch.zeros_like(sin[:n]))
    assert torch.allclose(cos[n], torch.ones_like(cos[n])) and float(sin[n + 1].abs().max()) > 0
    z, sc, t, w, mode = _inputs()
    with torch.no_grad():
        a = net(z, sc, t, w, mode).out
        b = net(z.flip(1), sc.flip(1), t, w, mode).out.flip(1)
    assert float((a - b).abs().max()) > 1e-4  # RoPE makes the network position-aware


@pytest.mark.gpu
def test_xformers_matches_sdpa_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("xformers.ops")
    from dlmbench.nn.attention import xformers_available

    if not xformers_available():
        pytest.skip("xformers does not run on this device")
    net = _denoiser().cuda().to(torch.bfloat16).eval()
    args = _inputs(device="cuda")
    with torch.no_grad():
        net.set_attention_backend("sdpa")
        ref = net(*args).hidden.float()
        net.set_attention_backend("xformers")
        out = net(*args).hidden.float()
    assert torch.allclose(out, ref, atol=5e-2, rtol=5e-2)
