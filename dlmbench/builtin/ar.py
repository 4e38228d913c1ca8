"""The autoregressive baseline ``ar``: a small causal transformer, read top to bottom.

Every DLM table carries a left-to-right model trained under the same token budget; this
is it. The layout follows nanoGPT (Karpathy): attention, MLP, Block, config, model. The
choices follow the AR baseline of the MDLM/Duo codebases (kuleshov-group/mdlm@c112c52, s-sahoo/duo@7c9b498), which
is their DiT block without time conditioning:

* pre-norm blocks, LayerNorm without bias, GELU (tanh) MLP with ratio 4;
* rotary positions (GPT-NeoX rotate-half, base 10000) on q and k;
* causal attention through :func:`dlmbench.nn.attention.attention`;
* an untied output layer by default (``tie_weights=True`` ties it, as GPT-2 does);
* the ``[MASK]`` logit is set to ``-inf`` (Duo's ``AR._process_model_output``): the
  reserved mask id never occurs in data, so it gets no probability in the loss, the
  likelihood or the samples.

Position ``i`` is predicted from positions ``< i``: the network reads
``[BOS, x_0, ..., x_{L-2}]`` (the tokens shifted right by one, ``spec.bos_id`` first) and
its output at position ``i`` is the distribution of ``x_i``. For a conditional task the
loss and the likelihood cover the target positions only (``i >= spec.prefix_len``).

Sampling lives in :mod:`dlmbench.builtin.ar_sampler` (``ancestral`` with a KV cache,
``greedy``); both are registered here.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

import dlmbench
from dlmbench.data import Batch, DataSpec
from dlmbench.model import Model, ModelConfig
from dlmbench.nn.attention import attention
from dlmbench.nn.rotary import Rotary, apply_rotary


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    ``keys[l]`` and ``values[l]`` are ``(B, H, max_len, D)``; :meth:`update` writes the
    new positions ``[start, start + T)`` and returns everything up to ``start + T``.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, n_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: "ARConfig", layer: int):
        super().__init__()
        self.layer, self.n_head = layer, cfg.n_head
        self.backend = cfg.attention_backend
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)  # [Q | K | V]
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache: KVCache | None = None, start: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, start)  # (B, H, start + T, D)
        y = attention(q, k, v, backend=self.backend, causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: "ARConfig"):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: "ARConfig", layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, start=0):
        x = x + self.attn(self.ln1(x), cos, sin, cache, start)
        return x + self.mlp(self.ln2(x))


class ARConfig(ModelConfig):
    """Options of ``ar``. The defaults are the ``small`` preset (12 x 768, GPT-2 small
    sized) with the MDLM/Duo OWT recipe their AR baseline shares (Duo appendix C.5,
    ``configs/config.yaml`` of both codebases): AdamW 3e-4, betas (0.9, 0.999), no weight decay, 2500 warmup steps then
    constant, clip 1.0, EMA 0.9999. ``tiny`` matches the MDLM/Duo tiny presets (2 x 128,
    4 heads, lr 1e-3, 100 warmup steps) so the CPU comparison is like for like."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(n_layer=2, n_head=4, n_embd=128, dropout=0.0, lr=1e-3, warmup_steps=100),
        "small": dict(n_layer=12, n_head=12, n_embd=768, dropout=0.1),
    }

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    grad_clip: float = 1.0
    ema_decay: float = 0.9999

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: int = 4
    dropout: float = 0.1
    tie_weights: bool = False
    attention_backend: str = "auto"

    @model_validator(mode="after")
    def _check_heads(self) -> "ARConfig":
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"n_embd={self.n_embd} must split into n_head={self.n_head} heads of even size"
            )
        return self


class GPT(nn.Module):
    """The network: ``(B, T)`` token ids at positions ``[start, start + T)`` -> ``(B, T, V)``.

    With a :class:`KVCache` the keys of earlier positions come from the cache, so one
    call per new token is all decoding needs. This is ``model.network``: every call is
    one function evaluation per row.
    """

    def __init__(self, cfg: ARConfig, vocab_size: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.rotary = Rotary(cfg.n_embd // cfg.n_head)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scaled residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, start: int = 0):
        B, T = idx.shape
        if start + T > self.max_len:
            raise ValueError(f"positions up to {start + T} exceed max_len={self.max_len}")
        cos, sin = self.rotary.cos_sin(start + T, idx.device)
        cos, sin = cos[start:], sin[start:]  # (T, D)
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, cache, start)
        return self.head(self.ln_f(x))  # (B, T, V)


class AR(Model):
    """Left-to-right baseline: exact likelihood, one network call per generated token."""

    name = "ar"
    Config = ARConfig
    default_sampler = "ancestral"

    def __init__(self, config: ARConfig, spec: DataSpec):
        super().__init__(config, spec)
        self.net = GPT(config, spec.vocab_size, spec.seq_len)

    @property
    def network(self) -> nn.Module:
        return self.net

    # the interface the samplers use ---------------------------------------------------
    def init_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of ``spec.seq_len`` positions."""
        cfg, p = self.config, self.net.tok_emb.weight
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, self.spec.seq_len,
                       cfg.n_embd // cfg.n_head, p.device, p.dtype)

    def logits(self, idx: torch.Tensor, cache: KVCache | None = None, start: int = 0):
        """Float32 next-token logits ``(B, T, V)`` for inputs at ``[start, start + T)``;
        the ``[MASK]`` logit is ``-inf``."""
        out = self.net(idx, cache, start).float()
        return out.index_fill(-1, torch.tensor([self.spec.mask_id], device=out.device), -math.inf)

    # training and likelihood ----------------------------------------------------------
    def shift_right(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[BOS, x_0, ..., x_{L-2}]``: the network input that predicts ``x``."""
        bos = torch.full_like(tokens[:, :1], self.spec.bos_id)
        return torch.cat([bos, tokens[:, :-1]], dim=1)

    def loss_positions(self, batch: Batch) -> torch.Tensor:
        """Bool ``(B, L)``: ``batch.loss_mask``, or every position from ``prefix_len`` on."""
        if batch.loss_mask is not None:
            return batch.loss_mask.bool()
        keep = torch.zeros_like(batch.tokens, dtype=torch.bool)
        keep[:, self.spec.prefix_len :] = True
        return keep

    def token_nll(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position NLL in nats and the positions that count, both ``(B, L)``."""
        x = batch.tokens
        logits = self.logits(self.shift_right(x))  # (B, L, V)
        nll = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # (B, L)
        keep = self.loss_positions(batch)
        return nll.masked_fill(~keep, 0.0), keep

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean next-token cross-entropy over the counted positions of the batch."""
        nll, keep = self.token_nll(batch)
        return nll.sum() / keep.sum().clamp_min(1)

    def nelbo(self, batch: Batch) -> torch.Tensor:
        """Exact ``-log p(x)`` per sequence (nats) over the loss positions: for AR the
        bound is tight."""
        nll, _ = self.token_nll(batch)
        return nll.sum(dim=1)


@dlmbench.hookimpl
def register_models(register):
    register(AR)


@dlmbench.hookimpl
def register_samplers(register):
    from dlmbench.builtin.ar_sampler import Ancestral, Greedy

    register(Ancestral)
    register(Greedy)
