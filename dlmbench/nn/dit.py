"""The DiT backbone of MDLM and Duo, shared by both plugins: the "DDiT" of
``kuleshov-group/mdlm@c112c52 models/dit.py`` and ``s-sahoo/duo@7c9b498 models/dit.py``.

A bidirectional transformer with adaLN-Zero time conditioning, read top to bottom:

* ``vocab_embed``: a raw ``[K, D]`` matrix read by lookup (Kaiming-uniform, a = sqrt 5).
  Duo's curriculum feeds a ``(B, L, K)`` float tensor instead; the embedding is then the
  soft lookup ``softmax(input) @ E`` (``EmbeddingLayer.forward`` of Duo's ``models/dit.py``).
* ``sigma_map``: ``c = SiLU(MLP(phi(sigma)))``, phi the 256-wide sinusoidal embedding
  (cosine half first, max period 1e4), MLP ``Linear(256, cond) - SiLU - Linear(cond, cond)``.
* ``blocks``: pre-norm blocks. ``adaLN_modulation(c)`` gives ``(shift, scale, gate)`` for
  attention then MLP, in that chunk order; the layer norm has no bias, runs in fp32 and is
  followed by an elementwise weight; QKV has no bias and is laid out ``[Q | K | V]`` by
  heads; rotary (GPT-NeoX rotate-half, base 1e4) on q and k; full bidirectional
  attention through :func:`dlmbench.nn.attention.attention`; the residual update is
  ``x + gate * Dropout(branch)``; the MLP is ``Linear - GELU(tanh) - Linear`` with biases.
* ``output_layer``: layer norm, adaLN ``(shift, scale)``, ``Linear(D, K)`` with bias.
* adaLN linears and the output linear are zero-initialised (so a fresh network outputs
  uniform logits); the others keep PyTorch's default initialisation.

Parameter names, shapes and registration order are those of the released checkpoints
(the ``backbone.*`` keys of the ``model.safetensors`` of the Hugging Face repositories
``kuleshov-group/mdlm-owt`` and ``s-sahoo/duo``, without the prefix), so those load by key
mapping (:mod:`dlmbench.nn.dit_weights`). The network is built from its config by
:meth:`dlmbench.nn.dit_config.DiTModelConfig.build_dit`.

Precision: on CUDA the blocks and output layer run under bf16 autocast when ``bf16`` is
set, as in the references; on CPU everything is fp32 unless the caller runs under
autocast (``--precision bf16``). The returned logits are fp32.
Differences from the official code: attention goes through the shared backend switch
(SDPA / xformers) rather than flash-attn's varlen kernel, and rotary is applied in fp32
(the official casts cos/sin to the activation dtype); both agree to bf16 noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlmbench.nn.attention import attention
from dlmbench.nn.rotary import Rotary, apply_rotary

FREQUENCY_EMBEDDING_SIZE = 256


def timestep_embedding(sigma: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10_000.0):
    """Sinusoidal features of ``sigma`` ``(B,)``: ``[cos(sigma f), sin(sigma f)]``, ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half
    )
    args = sigma.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """``sigma_map``: sinusoidal(256) -> Linear -> SiLU -> Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, cond_dim: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, cond_dim, bias=True),
            nn.SiLU(),
            nn.Linear(cond_dim, cond_dim, bias=True),
        )

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(sigma, self.frequency_embedding_size))


class EmbeddingLayer(nn.Module):
    """``vocab_embed.embedding``: lookup for ids, soft lookup for ``(B, L, K)`` inputs."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.embedding[x]
        if x.dim() != 3:
            raise ValueError(f"DiT input must be (B, L) ids or (B, L, K) logits, got {tuple(x.shape)}")
        # Duo's curriculum: the input holds logits (w / tau); softmax over the vocabulary.
        weights = torch.softmax(x.float(), dim=-1)
        return weights @ self.embedding.float()


class LayerNorm(nn.Module):
    """Bias-free layer norm computed in fp32, then an elementwise ``weight``."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.layer_norm(x.float(), [self.dim])
        return y * self.weight[None, None, :]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DDiTBlock(nn.Module):
    """One adaLN-Zero transformer block; attribute order is the checkpoints' key order."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4,
                 dropout: float = 0.1, attention_backend: str = "auto"):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.attention_backend = attention_backend
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.dropout2 = nn.Dropout(dropout)
        self.dropout = dropout
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        )
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        q, k, v = self.attn_qkv(h).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = attention(q, k, v, backend=self.attention_backend)  # (B, H, L, hd), bidirectional
        y = y.transpose(1, 2).reshape(B, L, D)
        x = x + gate_msa * self.dropout1(self.attn_out(y))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + gate_mlp * self.dropout2(self.mlp(h))


class DDiTFinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The MDLM/Duo backbone. ``forward(x, sigma)`` is one function evaluation.

    ``x``: ``(B, L)`` int64 ids, or ``(B, L, K)`` float logits for the soft input.
    ``sigma``: ``(B,)`` total noise (callers pass zeros when time conditioning is off).
    Returns ``(B, L, K)`` fp32 logits (no parameterisation applied).
    """

    def __init__(self, vocab_size: int, hidden_size: int = 768, n_blocks: int = 12, n_heads: int = 12,
                 cond_dim: int = 128, mlp_ratio: int = 4, dropout: float = 0.1,
                 attention_backend: str = "auto", bf16: bool = True):
        super().__init__()
        self.vocab_size = vocab_size
        self.bf16 = bf16
        self.vocab_embed = EmbeddingLayer(hidden_size, vocab_size)
        self.sigma_map = TimestepEmbedder(cond_dim)
        self.rotary_emb = Rotary(hidden_size // n_heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(hidden_size, n_heads, cond_dim, mlp_ratio, dropout, attention_backend)
            for _ in range(n_blocks)
        )
        self.output_layer = DDiTFinalLayer(hidden_size, vocab_size, cond_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = self.vocab_embed(x)
        c = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb.cos_sin(h.shape[1], h.device)
        # bf16 on CUDA as in the references; anywhere when the caller already runs under
        # autocast (dlmbench --precision bf16), whose bf16 activations fp32 blocks could not take
        use_bf16 = (self.bf16 and h.is_cuda) or torch.is_autocast_enabled(h.device.type)
        with torch.autocast(device_type=h.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for block in self.blocks:
                h = block(h, cos, sin, c)
            logits = self.output_layer(h, c)
        return logits.float()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
