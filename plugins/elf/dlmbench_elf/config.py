"""Every ELF option, with the reference recipe as defaults and the model sizes as presets.

Its own module so that the encoder, the denoiser and the model all read it without
importing each other. Sources: the paper ("Embedded Language Flows", arXiv 2605.10938:
Tab. 3 for the B/M/L sizes, App. D.1 for the network, App. B.1 and C.3 for the training
distributions and the branch split, Tab. 4 and App. C.5 for the optimiser) and the
training configs of ``lillian039/ELF@b29d883`` (``src/configs/training_configs/*.yml``:
latent std 0.2, noise scales 2 and 5, decode probability 0.2).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from dlmbench.model import ModelConfig

_PAPER = {  # shared by the paper-scale presets: frozen T5-small latents / 0.2, bottleneck 128 (App. C.2)
    "encoder": "frozen",
    "encoder_name": "t5-small",
    "latent_scale": 0.2,
    "bottleneck_dim": 128,
    "warmup_steps": 9_500,  # 0.5 epoch on OWT; the conditional tasks used 5k
    # the reference optimiser (lillian039/ELF main@5098bf2 src/utils/train_utils.py::get_optimizer,
    # src/configs/training_configs/*.yml): optax.contrib.muon at its defaults behind
    # clip_by_global_norm(1.0); lr = blr 1e-3 x global batch 512 / 256 (src/train.py); the aux
    # Nesterov-Adam's betas are optax's (0.9, 0.999), not the config's adam_b1/b2 (AdamW only);
    # weight_decay 0; EMA ema_decay1 0.9999 fixed from the first step (src/train_step.py)
    "optimizer": "muon-optax",
    "lr": 2e-3,
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "ema_decay": 0.9999,
    "ema_warmup": False,
}


class ELFConfig(ModelConfig):
    """Every ELF knob. The B/M/L presets are the reference recipe (Muon as optax computes it,
    lr 2e-3, EMA 0.9999 without warm-up); the class defaults are ELF-B with the optimiser of the
    paper's App. C.5 ablation (AdamW 1e-4, betas (0.9, 0.95)) and dlmbench's warmed-up EMA;
    ``tiny`` is the CPU-sized embedded default on those class defaults."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # like the MDLM/Duo/AR tiny presets (2 x 128, 4 heads, lr 1e-3, 100 warmup steps);
        # a 2-layer 64-d T5 over the task's vocabulary pretrained from scratch on the
        # training split (the reference's encoder is pretrained), latent scale estimated
        "tiny": {
            "depth": 2,
            "hidden": 128,
            "heads": 4,
            "bottleneck_dim": 64,
            "encoder": "scratch",
            "encoder_name": None,
            "encoder_d_model": 64,
            "encoder_layers": 2,
            "encoder_heads": 4,
            "encoder_d_ff": 256,
            "latent_scale": None,
            "lr": 1e-3,
            "warmup_steps": 100,
        },
        "B": {**_PAPER, "depth": 12, "hidden": 768, "heads": 12},
        "M": {**_PAPER, "depth": 24, "hidden": 1056, "heads": 16},
        "L": {**_PAPER, "depth": 32, "hidden": 1280, "heads": 16},
    }

    # optimiser (core fields): the App. C.5 AdamW ablation, 1e-4 (0.9, 0.95), clip 1, EMA .9999;
    # the reference's Muon 2e-3 with a fixed EMA is _PAPER's (presets B/M/L)
    optimizer: str = "adamw"
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)

    # denoiser (paper App. D.1; src/modules/model.py); defaults are ELF-B
    depth: int = Field(12, ge=1, le=128)
    hidden: int = Field(768, ge=8, le=16384)
    heads: int = Field(12, ge=1, le=256)
    mlp_hidden: int | None = Field(None, ge=1)  # None: floor(8 * hidden / 3)
    bottleneck_dim: int = Field(128, ge=1)
    num_time_tokens: int = Field(4, ge=1, le=64)
    num_scale_tokens: int = Field(4, ge=1, le=64)
    num_mode_tokens: int = Field(4, ge=1, le=64)
    freq_dim: int = Field(256, ge=2, le=4096)
    rope_base: float = Field(10_000.0, gt=1)
    norm_eps: float = Field(1e-6, gt=0, lt=1e-2)
    attention_backend: Literal["auto", "sdpa", "xformers", "math"] = "auto"

    # encoder and latents (src/modules/t5_encoder.py; the embedding ablation of paper Sec. 4.1)
    encoder: Literal["frozen", "joint", "scratch", "random", "token-embeddings", "learned"] = "frozen"
    encoder_name: str | None = "t5-small"  # hub name or local directory; None: build from the fields below
    encoder_d_model: int = Field(64, ge=4, le=8192)
    encoder_layers: int = Field(2, ge=1, le=64)
    encoder_heads: int = Field(4, ge=1, le=128)
    encoder_d_ff: int = Field(256, ge=4)
    encoder_d_kv: int | None = Field(None, ge=1)
    latent_scale: float | None = Field(0.2, gt=0)  # None: estimate (random / tiny encoders)
    latent_mean: float = 0.0
    # encoder="scratch": masked-LM pretraining on the training split (dlmbench_elf.pretrain)
    encoder_pretrain_steps: int = Field(4000, ge=1)
    encoder_pretrain_batch_size: int = Field(64, ge=1)
    encoder_pretrain_lr: float = Field(1e-3, gt=0)
    encoder_mask_rate: float = Field(0.4, gt=0, lt=1)

    # flow and denoise branch (paper Sec. 3.1, Eq. 1; App. B.1; Alg. 3)
    prediction: Literal["x", "v"] = "x"
    noise_scale: float = Field(2.0, gt=0)
    t_mean: float = Field(-1.5, ge=-10, le=10)
    t_std: float = Field(0.8, gt=0, le=10)
    t_eps: float = Field(0.05, gt=0, lt=1)
    self_cond_prob: float = Field(0.5, ge=0, le=1)
    sc_scale_min: float = Field(0.5, gt=0)  # (1 + w) ~ LogUniform[1 + min, 1 + max]
    sc_scale_max: float = Field(5.0, gt=0, le=100)
    label_drop_prob: float = Field(0.1, ge=0, lt=1)  # conditional tasks only
    # conditional row layout (dlmbench_elf.layout): "fixed" reads dlmbench's rows as stored,
    # source = the first prefix_len positions; "packed" repacks each row as the reference's
    # collate_fn does (lillian039/ELF@b29d883 src/utils/data_utils.py): the source at its true
    # length, the target right after it, T5 keys past the valid length masked, loss on
    # everything after the source, and sampled ids shifted back into the fixed layout
    source_layout: Literal["fixed", "packed"] = "fixed"

    # decode branch (paper App. B.1, Alg. 4)
    decode_prob: float = Field(0.2, ge=0, le=1)
    decode_p_mean: float = Field(0.8, ge=-10, le=10)
    decode_p_std: float = Field(0.8, gt=0, le=10)
    decode_noise_scale: float | None = Field(None, gt=0)  # None: 5 unconditional, 1 conditional

    @model_validator(mode="after")
    def _check(self) -> "ELFConfig":
        if self.optimizer not in ("adamw", "muon", "muon-optax"):
            raise ValueError(f"optimizer={self.optimizer!r} must be 'adamw', 'muon' or 'muon-optax'")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden={self.hidden} must split into {self.heads} heads of even size (RoPE)")
        if self.encoder_d_model % self.encoder_heads and self.encoder_d_kv is None:
            raise ValueError("encoder_d_model must be divisible by encoder_heads (or set encoder_d_kv)")
        if self.sc_scale_min > self.sc_scale_max:
            raise ValueError(f"sc_scale_min={self.sc_scale_min} exceeds sc_scale_max={self.sc_scale_max}")
        if self.encoder == "frozen" and self.encoder_name is None:
            raise ValueError(
                "encoder='frozen' loads pretrained weights and needs encoder_name (e.g. 't5-small' or a "
                "local directory); a frozen randomly initialised T5 is encoder='random'"
            )
        if self.encoder == "learned" and self.encoder_name is not None:
            raise ValueError("encoder='learned' builds its own table; set encoder_name=None")
        return self
