"""The model options every DiT-backbone plugin shares (MDLM, Duo).

Architecture fields sized by preset (``tiny`` for the CPU default, ``small`` = the
released OWT models) and the references' optimiser: AdamW 3e-4, betas (0.9, 0.999),
no weight decay, 2500 warm-up steps then constant, gradient clip 1.0, EMA 0.9999
(mdlm_duo.md section 1). A plugin subclasses it and adds its diffusion options.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dlmbench.model import ModelConfig
from dlmbench.nn.dit import SIZES


class DiTModelConfig(ModelConfig):
    presets = {
        "tiny": {**SIZES["tiny"].as_dict(), "warmup_steps": 100},
        "small": {**SIZES["small"].as_dict()},
    }

    # architecture (mdlm_duo.md section 1, config model=small)
    hidden_size: int = Field(768, gt=0)
    n_blocks: int = Field(12, gt=0)
    n_heads: int = Field(12, gt=0)
    cond_dim: int = Field(128, gt=0)
    mlp_ratio: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_backend: Literal["auto", "sdpa", "xformers", "math"] = "auto"
    bf16: bool = True  # bf16 autocast of the blocks on CUDA (CPU: only under --precision bf16)
    # optimiser defaults (section 1)
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
