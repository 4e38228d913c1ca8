"""The ELF denoiser: a pre-norm transformer with in-context condition tokens.

Implements the ELF network (paper App. D.1, in-context conditioning App. B.1 and C.4;
``lillian039/ELF@b29d883 src/modules/model.py`` and ``src/modules/layers.py``), read
top-down like nanoGPT:

    [z_t ; x_sc] (B, L, 2D) -> Linear -> D -> Linear(D -> 128, no bias) -> Linear(128 -> H)
    prefix = [4 time tokens | 4 SC-CFG-scale tokens | 4 mode tokens]      (B, 12, H)
    depth x Block( RMSNorm -> MHSA(qkv bias, per-head RMS qk-norm, RoPE) ; RMSNorm -> SwiGLU )
    x head:      RMSNorm -> zero-init Linear(H -> D)          = x_theta (or v_theta)
    decode head: Linear(H -> D) -> GELU -> Linear(D -> |V|)   on the *pre-norm* hidden state

Time / scale tokens are learned vectors plus an MLP of a 256-frequency sinusoidal
embedding of the *raw* t in [0, 1] or w; mode tokens are learned vectors times a 0/1 gate
(all zeros in denoise mode). Prefix tokens get no rotary rotation; the sequence is
rotated from position 0. There is no adaLN and no attention mask (pads included).

Init (``src/modules/layers.py``): xavier-uniform weights and zero biases for dense layers,
N(0, 0.02) for the condition tokens and time/scale MLPs, zeros for the x head.

Differences from the official code, named here:
- RoPE uses ``dlmbench.nn.rotary`` (GPT-NeoX rotate-half); the reference's
  ``TextRotaryEmbeddingFast`` rotates interleaved pairs. The two differ by a fixed
  permutation of each head's q/k channels, so they are the same function class when
  trained from scratch; loading a released checkpoint would permute the q/k rows of
  ``qkv`` and the qk-norm weights.
- Softmax precision: the ``math`` backend computes it in fp32 explicitly; ``sdpa`` and
  ``xformers`` accumulate it in fp32 inside their kernels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlmbench.nn.attention import attention
from dlmbench.nn.rotary import Rotary, apply_rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, backend: str = "auto", eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.backend = backend
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.proj = nn.Linear(hidden, hidden, bias=True)
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)  # (B, nh, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = attention(q, k, v, backend=self.backend)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """SwiGLU with hidden ``floor(8H/3)`` by default (code: ``int(int(4H) * 2/3)``)."""

    def __init__(self, hidden: int, inner: int | None = None):
        super().__init__()
        inner = inner or (8 * hidden) // 3
        self.w12 = nn.Linear(hidden, 2 * inner, bias=True)
        self.w3 = nn.Linear(inner, hidden, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_hidden: int | None, backend: str, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(hidden, eps)
        self.attn = Attention(hidden, heads, backend, eps)
        self.norm2 = RMSNorm(hidden, eps)
        self.mlp = SwiGLU(hidden, mlp_hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class ScalarEmbedder(nn.Module):
    """Sinusoidal (cos | sin, ``freq_dim`` frequencies, period 1e4) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp_0 = nn.Linear(freq_dim, hidden)
        self.mlp_2 = nn.Linear(hidden, hidden)

    @staticmethod
    def sinusoid(s: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
        args = s.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, s: Tensor) -> Tensor:
        e = self.sinusoid(s, self.freq_dim).to(self.mlp_0.weight.dtype)
        return self.mlp_2(F.silu(self.mlp_0(e)))


class DecodeHead(nn.Module):
    """Linear(H -> D) -> GELU -> Linear(D -> |V|), applied to the pre-norm hidden state.

    With ``tied=True`` (the ``learned`` embedding ablation) the last weight is the
    encoder's renormalised table, passed in at call time; only its bias lives here.
    """

    def __init__(self, hidden: int, d_latent: int, vocab_size: int, tied: bool = False):
        super().__init__()
        self.proj = nn.Linear(hidden, d_latent)
        self.unembed = None if tied else nn.Linear(d_latent, vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if tied else None

    def forward(self, h: Tensor, weight: Tensor | None = None) -> Tensor:
        u = F.gelu(self.proj(h), approximate="tanh")  # tanh-approximated, as the reference's decode head
        if self.unembed is not None:
            return self.unembed(u)
        assert weight is not None, "a tied decode head needs the embedding table"
        return F.linear(u, weight.to(u.dtype), self.bias.to(u.dtype))


class DenoiserOutput(NamedTuple):
    out: Tensor  # (B, L, D) the x-head output: x_theta (prediction "x") or v_theta ("v")
    hidden: Tensor  # (B, L, H) final pre-norm hidden states, input of the decode head


class Denoiser(nn.Module):
    """The network whose forward call is one function evaluation (``model.network``)."""

    def __init__(
        self,
        *,
        d_latent: int,
        vocab_size: int,
        hidden: int,
        depth: int,
        heads: int,
        bottleneck: int = 128,
        num_time_tokens: int = 4,
        num_scale_tokens: int = 4,
        num_mode_tokens: int = 4,
        freq_dim: int = 256,
        rope_base: float = 10_000.0,
        mlp_hidden: int | None = None,
        norm_eps: float = 1e-6,
        attention_backend: str = "auto",
        tied_unembedding: bool = False,
    ):
        super().__init__()
        self.d_latent, self.hidden, self.heads = d_latent, hidden, heads
        self.num_prefix = num_time_tokens + num_scale_tokens + num_mode_tokens
        # input: [z ; x_sc] -> D -> bottleneck -> H
        self.self_cond_proj = nn.Linear(2 * d_latent, d_latent)
        self.bottleneck = nn.Linear(d_latent, bottleneck, bias=False)
        self.in_proj = nn.Linear(bottleneck, hidden)
        # in-context condition prefix
        self.t_embedder = ScalarEmbedder(hidden, freq_dim)
        self.w_embedder = ScalarEmbedder(hidden, freq_dim)
        self.time_tokens = nn.Parameter(torch.empty(1, num_time_tokens, hidden))
        self.scale_tokens = nn.Parameter(torch.empty(1, num_scale_tokens, hidden))
        self.mode_tokens = nn.Parameter(torch.empty(1, num_mode_tokens, hidden))
        self.rotary = Rotary(hidden // heads, rope_base)
        self.blocks = nn.ModuleList(
            Block(hidden, heads, mlp_hidden, attention_backend, norm_eps) for _ in range(depth)
        )
        self.final_norm = RMSNorm(hidden, norm_eps)
        self.x_head = nn.Linear(hidden, d_latent)
        self.decode_head = DecodeHead(hidden, d_latent, vocab_size, tied=tied_unembedding)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.t_embedder, self.w_embedder):
            for lin in (emb.mlp_0, emb.mlp_2):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
        for tok in (self.time_tokens, self.scale_tokens, self.mode_tokens):
            nn.init.normal_(tok, std=0.02)
        nn.init.zeros_(self.x_head.weight)
        nn.init.zeros_(self.x_head.bias)

    def set_attention_backend(self, backend: str) -> None:
        for block in self.blocks:
            block.attn.backend = backend

    def _rope_tables(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        cos, sin = self.rotary.cos_sin(length, device)
        n = self.num_prefix  # prefix tokens: identity rotation (cos 1, sin 0)
        cos = torch.cat([torch.ones(n, cos.shape[1], device=device), cos])
        sin = torch.cat([torch.zeros(n, sin.shape[1], device=device), sin])
        return cos, sin

    def forward(
        self, z: Tensor, sc: Tensor, t: Tensor, w: Tensor, mode: Tensor | None = None
    ) -> DenoiserOutput:
        """One network evaluation.

        Args:
            z: ``(B, L, D)`` noisy latent.
            sc: ``(B, L, D)`` self-conditioning latent (zeros when absent).
            t: ``(B,)`` raw time in [0, 1].
            w: ``(B,)`` self-conditioning CFG scale.
            mode: ``(B,)`` gate of the mode tokens (1 = decode, 0 = denoise); None = 0.
        """
        B, L, _ = z.shape
        dtype = self.in_proj.weight.dtype
        h = self.in_proj(self.bottleneck(self.self_cond_proj(torch.cat([z, sc], -1).to(dtype))))
        gate = torch.zeros(B, device=z.device) if mode is None else mode
        prefix = torch.cat(
            [
                self.time_tokens + self.t_embedder(t)[:, None],
                self.scale_tokens + self.w_embedder(w)[:, None],
                self.mode_tokens * gate.to(dtype).view(B, 1, 1),
            ],
            dim=1,
        ).to(dtype)
        x = torch.cat([prefix, h], dim=1)  # (B, n_prefix + L, H)
        cos, sin = self._rope_tables(L, z.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        hidden = x[:, self.num_prefix :]
        return DenoiserOutput(self.x_head(self.final_norm(hidden)), hidden)
