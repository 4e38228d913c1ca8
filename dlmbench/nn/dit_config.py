"""The model options every DiT-backbone plugin shares (MDLM, Duo), and the one way to
build their network from them (:meth:`DiTModelConfig.build_dit`).

Architecture fields sized by preset: ``small`` is the released OWT model (12 x 768, 12
heads, cond 128, dropout 0.1: ``configs/model/small.yaml`` of ``kuleshov-group/mdlm@c112c52``
and ``s-sahoo/duo@7c9b498``), ``tiny`` the CPU default (2 x 128, 4 heads, fast enough to
train on two cores). The optimiser is the references' (their ``configs/config.yaml``;
Duo paper App. C.5): AdamW 3e-4, betas (0.9, 0.999), no weight decay, 2500 warm-up steps
then constant, gradient clip 1.0, EMA 0.9999. A plugin subclasses it and adds its
diffusion options.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dlmbench.model import ModelConfig
from dlmbench.nn.dit import DiT


class DiTModelConfig(ModelConfig):
    presets = {
        "tiny": dict(hidden_size=128, n_blocks=2, n_heads=4, cond_dim=128, mlp_ratio=4, dropout=0.0,
                     warmup_steps=100),
        "small": dict(hidden_size=768, n_blocks=12, n_heads=12, cond_dim=128, mlp_ratio=4, dropout=0.1),
    }

    # architecture (the defaults are config model=small)
    hidden_size: int = Field(768, gt=0)
    n_blocks: int = Field(12, gt=0)
    n_heads: int = Field(12, gt=0)
    cond_dim: int = Field(128, gt=0)
    mlp_ratio: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_backend: Literal["auto", "sdpa", "xformers", "math"] = "auto"
    bf16: bool = True  # bf16 autocast of the blocks on CUDA (CPU: only under --precision bf16)
    # optimiser defaults
    lr: float = 3e-4
    warmup_steps: int = 2500
    ema_decay: float = 0.9999

    @model_validator(mode="after")
    def _check_heads(self) -> "DiTModelConfig":
        if self.hidden_size % self.n_heads or (self.hidden_size // self.n_heads) % 2:
            raise ValueError(
                f"hidden_size={self.hidden_size} must split into n_heads={self.n_heads} heads of even size (rotary)"
            )
        return self

    def build_dit(self, vocab_size: int) -> DiT:
        """The DiT these options describe, over a ``vocab_size`` vocabulary (freshly initialised)."""
        return DiT(
            vocab_size,
            hidden_size=self.hidden_size,
            n_blocks=self.n_blocks,
            n_heads=self.n_heads,
            cond_dim=self.cond_dim,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout,
            attention_backend=self.attention_backend,
            bf16=self.bf16,
        )
