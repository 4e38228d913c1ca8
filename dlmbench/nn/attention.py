"""Multi-head attention kernels behind one switch: ``auto | sdpa | xformers | math``.

xformers' memory-efficient attention is used only when every condition holds: CUDA
tensors, fp16/bf16, ``xformers.ops`` imports and a one-off probe call succeeded. Its
wheels import on a CPU-only machine, or against another torch build, and only fail when
called, hence the probe. Otherwise PyTorch's ``scaled_dot_product_attention``.
``math`` is a plain softmax(QK^T)V reference used by the tests.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "xformers", "math")


@functools.lru_cache(maxsize=1)
def xformers_available() -> bool:
    """True when xformers imports and runs a probe on this CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import xformers.ops as xops  # noqa: F401

            q = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
            xops.memory_efficient_attention(q, q, q)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend not in BACKENDS:
        from dlmbench.errors import ConfigError

        raise ConfigError(f"attention_backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        usable = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and xformers_available()
        return "xformers" if usable else "sdpa"
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
    causal: bool = False,
) -> torch.Tensor:
    """Attention on ``(B, H, L, D)`` tensors, scale ``1/sqrt(D)``; bidirectional by default.

    ``mask`` is an optional boolean ``(B, 1|H, Lq, Lk)`` tensor, True where attention is
    allowed. ``causal=True`` adds a causal mask aligned to the *end* of the keys: query
    ``i`` of ``Lq`` sees keys ``j <= i + Lk - Lq``, so decoding with a KV cache (``Lq``
    new queries against ``Lk`` cached keys) is causal too. Returns ``(B, H, Lq, D)``.
    """
    backend = resolve_backend(backend, q)
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        if mask is None and lq == lk and backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if lq > 1:  # a single query at the end sees every key: no mask needed
            keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
            mask = keep[None, None] if mask is None else mask & keep
    if backend == "xformers":
        import xformers.ops as xops

        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~mask, float("-inf")).expand(q.shape[0], q.shape[1], -1, -1)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
        )
        return out.transpose(1, 2)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)
