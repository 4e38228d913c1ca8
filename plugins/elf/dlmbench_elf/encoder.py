"""Tokens -> continuous latents: the T5 encoder side of ELF.

The reference latents are the final-RMSNorm hidden states of the frozen original
T5-small encoder, normalised by a scalar: ``x = (Enc(s) - 0) / 0.2``
(``lillian039/ELF@b29d883 src/modules/t5_encoder.py``; ``latent_std: 0.2`` in every
``src/configs/training_configs/*.yml``). This module provides that and the embedding
ablations of the paper (Sec. 4.1: pretrained contextual T5 best, then a contextual T5
trained from scratch, frozen T5 token embeddings, a frozen Gaussian table, a learned
table) behind one switch (``config.encoder``):

``frozen``            pretrained T5 (``encoder_name``: ``t5-small`` or a local path), frozen.
``joint``             a T5 (pretrained if named, else random init) trained with the flow.
``scratch``           a T5 (the named architecture, else a tiny one built from the config
                      over the task's own vocabulary) pretrained from scratch with masked
                      LM on the task's training split before the flow, then frozen: the
                      embedded CPU default, an offline analogue of the paper's "contextual
                      T5 trained from scratch" (a T5-small trained on OWT), not that
                      ablation itself (see :mod:`dlmbench_elf.pretrain`).
``random``            a randomly initialised T5, frozen (same architectures as ``scratch``).
``token-embeddings``  the T5 input embedding table only, frozen, no contextualisation
                      (pretrained if named; otherwise N(0, 1) rows: the paper's
                      "frozen Gaussian" ablation).
``learned``           a learned table, tied to the decode head's unembedding and
                      renormalised to unit RMS per row (the paper's worst variant; the
                      renormalisation is applied functionally at every forward, which is
                      what "renormalise the unembedding each step" computes for the
                      forward pass).

Masks (``build_self_attn_cond_masks`` in ``src/utils/encoder_utils.py``, and
``src/train_step.py``): on conditional tasks source queries attend only to source keys
(so the source latents never see the target and can be recomputed from the source alone
at sampling time); target queries see every valid key; for label-dropped rows target
queries do not see the source either. Pads (``spec.pad_id``) are masked as keys, as in
the reference's ``pad_token == "pad"`` configs. With ``source_layout: packed`` the source
ends at its true length and keys past the row's valid length are masked instead, as the
reference's conditional rows are (:mod:`dlmbench_elf.layout`).

Normaliser. The 0.2 of the reference is the measured std of *pretrained* T5-small
latents. A randomly initialised T5 ends in an RMSNorm with unit weight, so its latents
have RMS exactly 1 per vector and std ~1: dividing by 0.2 would give std-5 latents and a
signal-to-noise ratio 6x off the reference's. ``latent_scale=None`` therefore estimates
the std on a fixed random-token probe at build time (exactly right for random
RMSNorm-terminated encoders; for pretrained T5 the reference's 0.2 is set by the B/M/L
presets); a ``scratch`` encoder re-estimates it on training rows once pretrained, as the
paper estimates its statistics from OWT. The value is kept in a buffer so checkpoints
reproduce it.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlmbench.data import DataSpec
from dlmbench.environment import hub_offline
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.safe_weights import from_pretrained_safetensors
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.layout import encoder_allowed
from dlmbench_elf.pretrain import pretrain_encoder

ENCODER_MODES = ("frozen", "joint", "scratch", "random", "token-embeddings", "learned")
FROZEN_MODES = ("frozen", "scratch", "random", "token-embeddings")


def load_pretrained_t5(name: str, pretrained_weights: bool = True):
    """``T5EncoderModel`` (or only its config) from a hub name or local directory.

    Never passes ``trust_remote_code``. Offline (:func:`dlmbench.environment.hub_offline`)
    it looks only at local files, so a missing model fails at once with
    :class:`HubUnavailableError`.
    """
    from transformers import T5Config, T5EncoderModel

    local = os.path.isdir(os.path.expanduser(name))
    path = os.path.expanduser(name) if local else name
    offline = hub_offline()
    try:
        if pretrained_weights:
            model = from_pretrained_safetensors(T5EncoderModel, path, "ELF encoder_name",
                                                dropout_rate=0.0, local_files_only=local or offline)
            config = model.config
        else:
            model = None
            config = T5Config.from_pretrained(path, local_files_only=local or offline)
    except (OSError, ValueError) as err:
        if local:
            raise ConfigError(f"ELF encoder_name={name!r} is a directory but holds no loadable T5: {err}") from err
        raise HubUnavailableError(
            f"ELF encoder_name={name!r} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub (offline={offline}). Download it once and pass its directory as "
            f"encoder_name, or use encoder='random' for a T5 built from the config."
        ) from err
    if getattr(config, "model_type", None) != "t5":
        raise ConfigError(f"ELF encoder_name={name!r} is a {config.model_type!r} model, not T5")
    return model, config


def tiny_t5_config(config: ELFConfig, vocab_size: int):
    """A T5 encoder config from the ELF config fields (original-T5 ReLU FFN, no dropout)."""
    from transformers import T5Config

    heads = config.encoder_heads
    return T5Config(
        vocab_size=vocab_size,
        d_model=config.encoder_d_model,
        d_kv=config.encoder_d_kv or config.encoder_d_model // heads,
        d_ff=config.encoder_d_ff,
        num_layers=config.encoder_layers,
        num_heads=heads,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
        use_cache=False,
    )


class LatentEncoder(nn.Module):
    """``tokens (B, L) -> latents (B, L, D)``, already normalised: ``(Enc - mean) / scale``."""

    def __init__(self, config: ELFConfig, spec: DataSpec):
        super().__init__()
        from transformers import T5EncoderModel

        self.mode = config.encoder
        self.spec = spec
        self.pad_id = spec.pad_id
        self.t5: nn.Module | None = None
        self.embed: nn.Embedding | None = None
        self.table: nn.Parameter | None = None
        vocab = spec.vocab_size
        if self.mode == "learned":
            # N(0, 1) rows; only their direction matters after the renormalisation.
            self.table = nn.Parameter(torch.randn(vocab, config.encoder_d_model))
            self.dim = config.encoder_d_model
        else:
            name = config.encoder_name
            if name is not None:
                pretrained = self.mode in ("frozen", "joint", "token-embeddings")  # scratch/random: config only
                model, t5cfg = load_pretrained_t5(name, pretrained_weights=pretrained)
                if t5cfg.vocab_size < vocab:
                    raise ConfigError(
                        f"ELF encoder {name!r} has {t5cfg.vocab_size} token embeddings but the task's "
                        f"vocabulary has {vocab}; a pretrained T5 needs the task to use its tokenizer"
                    )
                if model is None:  # random init with the named architecture
                    t5cfg.dropout_rate = 0.0
                    model = T5EncoderModel(t5cfg)
            else:
                model = T5EncoderModel(tiny_t5_config(config, vocab))
            self.dim = int(model.config.d_model)
            if self.mode == "token-embeddings":
                weight = model.get_input_embeddings().weight.detach()[:vocab].clone()
                self.embed = nn.Embedding.from_pretrained(weight, freeze=True)
            else:
                self.t5 = model
        if self.frozen:
            for p in self.parameters():
                p.requires_grad_(False)
        self.register_buffer("latent_mean", torch.tensor(float(config.latent_mean)))
        self.register_buffer("latent_scale", torch.tensor(1.0))
        # set once a scratch encoder is pretrained; saved with the weights, so fitting a
        # loaded checkpoint again never replaces the encoder its flow was trained on
        self.register_buffer("pretrained", torch.tensor(False))
        if self.mode == "learned":
            scale = 1.0  # unit RMS by construction
        elif config.latent_scale is not None:
            scale = float(config.latent_scale)
        else:
            scale = self._estimate_scale(self._random_probe(spec))
        self._set_scale(scale)
        self.estimates_scale = self.mode != "learned" and config.latent_scale is None
        self.train(False)

    def _set_scale(self, scale: float) -> None:
        if not math.isfinite(scale) or scale <= 1e-6:
            raise ConfigError(f"ELF encoder latents are degenerate (estimated scale {scale}); check the encoder")
        self.latent_scale.fill_(scale)

    def pretrain(self, train: Tensor, seed: int, **options) -> dict:
        """``scratch`` mode: masked-LM pretraining on ``train`` rows, then (when the
        scale is estimated) the latent std re-measured on the first 64 of them. A no-op
        returning ``{}`` when this encoder was pretrained already."""
        if bool(self.pretrained):
            return {}
        facts = pretrain_encoder(self, train, seed=seed, **options)
        self.pretrained.fill_(True)
        if self.estimates_scale:
            device = next(self.t5.parameters()).device
            self._set_scale(self._estimate_scale(train[:64].to(device), self.spec.prefix_len))
            facts["latent_scale"] = float(self.latent_scale)
        return facts

    @property
    def frozen(self) -> bool:
        return self.mode in FROZEN_MODES

    def train(self, mode: bool = True) -> "LatentEncoder":
        # A frozen encoder stays in eval mode even while the flow trains.
        return super().train(mode and not self.frozen)

    # masks ------------------------------------------------------------------------------
    def attention_mask(self, tokens: Tensor, prefix_len: int, drop: Tensor | None) -> Tensor | None:
        """Additive ``(B, 1, L, L)`` T5 mask (None when nothing is masked)."""
        B, L = tokens.shape
        keys = tokens != self.pad_id  # (B, L)
        allowed = keys[:, None, :].expand(B, L, L)
        if prefix_len > 0:
            src = torch.arange(L, device=tokens.device) < prefix_len
            # source queries see only source keys
            allowed = allowed & ~(src[:, None] & ~src[None, :])[None]
            if drop is not None:
                # label-dropped rows: target queries do not see the source
                block = (~src[:, None] & src[None, :])[None] & drop[:, None, None]
                allowed = allowed & ~block
        return self._additive(allowed)

    def packed_attention_mask(self, tokens: Tensor, lengths: tuple[Tensor, Tensor],
                              drop: Tensor | None) -> Tensor | None:
        """The mask of packed rows (:func:`dlmbench_elf.layout.encoder_allowed`): ``lengths``
        is ``(source_len, valid_len)``; keys past ``valid_len`` are masked, not pads by id."""
        source_len, valid_len = lengths
        return self._additive(encoder_allowed(source_len, valid_len, tokens.shape[1], drop))

    def _additive(self, allowed: Tensor) -> Tensor | None:
        """Bool ``(B, L, L)`` -> additive ``(B, 1, L, L)`` in the T5's dtype; None if all allowed."""
        if bool(allowed.all()):
            return None
        dtype = next(self.t5.parameters()).dtype if self.t5 is not None else torch.float32
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    # latents ----------------------------------------------------------------------------
    def raw(self, tokens: Tensor, prefix_len: int = 0, drop: Tensor | None = None,
            lengths: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Un-normalised encoder output ``(B, L, D)``; ``lengths`` (``(source_len, valid_len)``)
        marks packed rows (:mod:`dlmbench_elf.layout`), which ignore ``prefix_len``."""
        if self.mode == "learned":
            return self.unembedding()[tokens]
        if self.embed is not None:
            return self.embed(tokens)
        if lengths is None:
            mask = self.attention_mask(tokens, prefix_len, drop)
        else:
            mask = self.packed_attention_mask(tokens, lengths, drop)
        return self.t5(input_ids=tokens, attention_mask=mask).last_hidden_state

    def forward(self, tokens: Tensor, prefix_len: int = 0, drop: Tensor | None = None,
                lengths: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                h = self.raw(tokens, prefix_len, drop, lengths)
        else:
            h = self.raw(tokens, prefix_len, drop, lengths)
        return ((h.float() - self.latent_mean) / self.latent_scale)

    def unembedding(self) -> Tensor | None:
        """``learned`` mode: the renormalised table (unit RMS rows), tied to the decode head."""
        if self.table is None:
            return None
        return F.normalize(self.table, dim=-1) * math.sqrt(self.table.shape[1])

    @staticmethod
    def _random_probe(spec: DataSpec) -> Tensor:
        """A fixed ``(8, min(L, 128))`` batch of random non-pad tokens."""
        gen = torch.Generator().manual_seed(0)
        length = max(1, min(spec.seq_len, 128))
        tokens = torch.randint(0, spec.vocab_size, (8, length), generator=gen)
        return torch.where(tokens == spec.pad_id, (tokens + 1) % spec.vocab_size, tokens)

    @torch.no_grad()
    def _estimate_scale(self, tokens: Tensor, prefix_len: int = 0) -> float:
        """Std of the encoder output on ``tokens`` (see module docstring)."""
        if self.embed is not None:
            return float((self.embed.weight.float() - self.latent_mean).std())
        h = self.raw(tokens, prefix_len, None).float()
        return float((h - self.latent_mean).std())
