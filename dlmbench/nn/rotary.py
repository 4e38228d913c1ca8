"""Rotary position embedding, GPT-NeoX "rotate-half" form (non-interleaved).

The MDLM/Duo DiT rotates this way with base 10000 (``models/dit.py`` of
``kuleshov-group/mdlm@c112c52`` and ``s-sahoo/duo@7c9b498``), and so does ELF's denoiser,
whose reference rotates interleaved pairs instead (a fixed permutation of each head's
channels; see :mod:`dlmbench_elf.denoiser`). This module is the single implementation.
"""

from __future__ import annotations

import torch


class Rotary(torch.nn.Module):
    """Holds ``inv_freq`` (a buffer, as in the released DiT checkpoints)."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def cos_sin(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, head_dim)`` cos and sin tables in float32."""
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``(B, H, L, D)``) by position tables ``(L, D)``, in float32."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
