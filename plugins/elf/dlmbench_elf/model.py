"""ELF: Embedded Language Flows (Hu et al., arXiv 2605.10938) as a dlmbench model.

A flow in the continuous latent space of a (frozen) T5 encoder, trained with one loss that
mixes two branches in every batch (paper Sec. 3, App. B.1, C.3; ``lillian039/ELF@b29d883
src/train_step.py``):

* **denoise** (80% of rows): x-prediction on the linear path z_t = t x + (1-t) 2 eps,
  t ~ logit-normal(-1.5, 0.8) per sequence, velocity-space MSE with (1-t) clamped at 0.05,
  self-conditioning with probability 0.5 and *training-time CFG on the self-conditioning
  signal*: ``v_tgt = v + m (1 - 1/w) (v_c - v_u)`` with (1+w) ~ LogUniform[1.5, 6]
  (Alg. 3, Eq. 3);
* **decode** (20% of rows): every token corrupted to its own level
  p ~ logit-normal(0.8, 0.8), ``z = p x + (1-p) s_d eps`` (s_d = 5 unconditional, 1
  conditional), fed at t = 1 in decode mode with a zero self-conditioning channel; CE
  against the tokens through a separate decode head (Alg. 4).

Conditional tasks keep the source prefix clean (its latents in both z and the
self-conditioning channel), take the loss on the target only, and drop the source for 10%
of rows (input CFG): the source latents are zeroed in x and z and the T5 target queries
stop attending to it. With ``source_layout: packed`` the rows are first repacked as the
reference's (:mod:`dlmbench_elf.layout`): the source is each row's own length, the target
follows it, and the loss covers every position after the source, EOS padding included.

Where paper and code differ this follows the code (it produced the checkpoints):
- the decode branch corrupts the source positions too (``train_step``: no
  ``restore_cond`` on ``decoder_z``), and its self-conditioning channel is all zeros;
- the branch is drawn per example in one forward pass with the losses masked by row (the
  PyTorch port at ``b29d883``; the JAX code of ``lillian039/ELF@5098bf2`` draws it per
  device, which mixes branches across the global batch the same way in expectation). The
  loss is the masked token mean over the batch, so in expectation it is
  0.8 x MSE + 0.2 x CE, as the JAX per-device mean;
- the regression target uses the same (1-t) clamp as the prediction;
- the two no-grad self-conditioning passes (zero channel -> x_u, v_u; channel x_u -> v_c)
  are run only on the rows that use them (m = 1 and denoise), which computes exactly the
  JAX target, whose guidance term is zeroed elsewhere.

Before the flow trains, ``prepare`` pretrains a ``scratch`` encoder (the ``tiny`` default)
with masked LM on the training split and freezes it (:mod:`dlmbench_elf.pretrain`): the
reference's latents come from a pretrained T5, and a frozen *random* T5 gave ELF almost
no grammatical samples on the embedded default (``leaderboard/elf-ablations.md``).

The network counted as NFE is the :class:`~dlmbench_elf.denoiser.Denoiser` only; the T5
encoder is not a function evaluation (it is needed in training, and once per sample to
embed a conditional task's source).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dlmbench.data import Batch, DataSpec
from dlmbench.hub_needs import HubNeed, hub_id
from dlmbench.model import Model, ModelConfig
from dlmbench.prefix import target_positions
from dlmbench.released import ReleasedWeights
from dlmbench.tokenizer import TokenizerRequest
from dlmbench_elf.config import ELFConfig
from dlmbench_elf.denoiser import Denoiser
from dlmbench_elf.encoder import LatentEncoder
from dlmbench_elf.layout import pack, scored
from dlmbench_elf.official import RELEASED_WEIGHTS
from dlmbench_elf.path import FlowPath, LogitNormal, LogUniformScale, sc_cfg_target


def build_denoiser(config: ELFConfig, d_latent: int, vocab_size: int) -> Denoiser:
    """The denoiser of ``config`` over ``d_latent``-dim latents and a ``vocab_size`` decode head."""
    return Denoiser(
        d_latent=d_latent,
        vocab_size=vocab_size,
        hidden=config.hidden,
        depth=config.depth,
        heads=config.heads,
        bottleneck=config.bottleneck_dim,
        num_time_tokens=config.num_time_tokens,
        num_scale_tokens=config.num_scale_tokens,
        num_mode_tokens=config.num_mode_tokens,
        freq_dim=config.freq_dim,
        rope_base=config.rope_base,
        mlp_hidden=config.mlp_hidden,
        norm_eps=config.norm_eps,
        attention_backend=config.attention_backend,
        tied_unembedding=config.encoder == "learned",
    )


class Prediction(NamedTuple):
    x: Tensor  # (B, L, D) x-prediction
    v: Tensor  # (B, L, D) velocity
    hidden: Tensor  # (B, L, H) input of the decode head


class ELF(Model):
    name: ClassVar[str] = "elf"
    Config: ClassVar[type[ModelConfig]] = ELFConfig
    default_sampler: ClassVar[str] = "sde"  # unconditional reference: SDE, w 3, gamma by steps
    default_conditional_sampler: ClassVar[str] = "ode"  # De-En / XSum reference: ODE, w 1, CFG 2
    released_weights: ClassVar[dict[str, ReleasedWeights]] = RELEASED_WEIGHTS

    @classmethod
    def load_weights(cls, source: str, spec: DataSpec, options: dict[str, Any], cache: Path,
                     preset: str | None = None) -> "ELF":
        """Released weights (``dlmbench_elf.official``): ``ema_params1`` of the authors'
        training state, converted once to safetensors under ``cache``."""
        from dlmbench_elf.official import load_official

        return load_official(source, spec=spec, cache=cache, preset=preset, **options)

    @classmethod
    def tokenizer_request(cls, config: ModelConfig) -> TokenizerRequest:
        """A pretrained T5's weights (``frozen``, ``joint``, ``token-embeddings``) read that
        T5's own ids, so ELF reads the task through its tokenizer, with nothing appended:
        the decode head has ``len(tokenizer)`` rows (32,100 for T5), as in the reference.
        Other encoders (the tiny default's ``scratch``, whose masked-LM pretraining needs a
        mask) read the task's own tokenizer."""
        assert isinstance(config, ELFConfig)
        if config.encoder in ("frozen", "joint", "token-embeddings") and config.encoder_name is not None:
            return TokenizerRequest(name=config.encoder_name, mask=False)
        return TokenizerRequest()

    @classmethod
    def hub_needs(cls, config: ModelConfig) -> list[HubNeed]:
        """The T5 its encoder loads by name (its weights, or only its config for ``scratch``
        and ``random``); released ELF weights hold no encoder, so they need it too."""
        assert isinstance(config, ELFConfig)
        if config.encoder == "learned" or not (repo := hub_id(config.encoder_name)):
            return []
        return [HubNeed(repo=repo, what=f"model elf: T5 encoder ({config.encoder})")]

    def __init__(self, config: ELFConfig, spec: DataSpec):
        super().__init__(config, spec)
        self.encoder = LatentEncoder(config, spec)
        self.denoiser = build_denoiser(config, self.encoder.dim, spec.vocab_size)
        self.path = FlowPath(config.noise_scale, config.t_eps)
        self.time_dist = LogitNormal(config.t_mean, config.t_std)
        self.decode_level_dist = LogitNormal(config.decode_p_mean, config.decode_p_std)
        self.scale_dist = LogUniformScale(config.sc_scale_min, config.sc_scale_max)
        if config.decode_noise_scale is not None:
            self.decode_noise_scale = config.decode_noise_scale
        else:
            self.decode_noise_scale = 1.0 if spec.conditional else 5.0
        self.last_losses: dict[str, Tensor] = {}
        # the reference's variable-length source (dlmbench_elf.layout); a no-op without a source
        self.packed = config.source_layout == "packed" and spec.conditional

    def prepare(self, train: Tensor, seed: int) -> dict:
        """``encoder="scratch"``: pretrain the T5 encoder on the training rows, then freeze it
        (once: a model whose encoder is pretrained, e.g. a loaded checkpoint, returns ``{}``)."""
        if self.config.encoder != "scratch":
            return {}
        cfg = self.config
        return self.encoder.pretrain(
            train, seed, steps=cfg.encoder_pretrain_steps, batch_size=cfg.encoder_pretrain_batch_size,
            lr=cfg.encoder_pretrain_lr, mask_rate=cfg.encoder_mask_rate,
        )

    # plumbing ---------------------------------------------------------------------------
    @property
    def network(self) -> Denoiser:
        return self.denoiser

    @property
    def latent_dim(self) -> int:
        return self.encoder.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.in_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.denoiser.in_proj.weight.device

    def encode(self, tokens: Tensor, drop: Tensor | None = None, prefix_len: int | None = None,
               lengths: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Normalised latents ``(B, L, D)`` in float32 (no grad unless the encoder trains);
        ``lengths = (source_len, valid_len)`` for packed rows (:mod:`dlmbench_elf.layout`)."""
        p = self.spec.prefix_len if prefix_len is None else prefix_len
        return self.encoder(tokens, p, drop, lengths)

    def predict(self, z: Tensor, sc: Tensor, t: Tensor, w: Tensor, mode: Tensor | None = None) -> Prediction:
        """One network evaluation, returned as both x- and v-prediction (float32)."""
        out, hidden = self.denoiser(z, sc, t, w, mode)
        out = out.float()
        if self.config.prediction == "x":
            return Prediction(out, self.path.velocity(out, z, t), hidden)
        return Prediction(self.path.data(out, z, t), out, hidden)

    def decode_logits(self, hidden: Tensor) -> Tensor:
        return self.denoiser.decode_head(hidden, self.encoder.unembedding())

    # training ---------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        cfg = self.config
        batch = batch.to(self.device)
        tokens = batch.tokens
        B, L = tokens.shape
        P = self.spec.prefix_len
        dev = tokens.device
        lengths = None
        if self.packed:  # the reference's rows: per-row source length, loss from it on
            rows = pack(tokens, P, self.spec.eos_id)
            tokens, lengths = rows.tokens, (rows.source_len, rows.valid_len)
            src = rows.source.unsqueeze(-1)  # (B, L, 1)
            mask = scored(rows, target_positions(self.spec, batch).scored, P).float()
        else:
            src = (torch.arange(L, device=dev) < P).view(1, L, 1)  # clean-source positions
            mask = target_positions(self.spec, batch).scored.float()  # loss on the target only

        # 1. latents (one encoder call per batch), label dropping for input CFG
        drop = (torch.rand(B, device=dev) < cfg.label_drop_prob) if P > 0 else None
        x = self.encode(tokens, drop, lengths=lengths)
        if drop is not None:
            x = x.masked_fill(drop.view(B, 1, 1) & src, 0.0)

        # 2. denoise inputs: z_t with the source kept clean
        t = self.time_dist.sample((B,), device=dev)
        s = self.path.sample(x, torch.randn_like(x), t)
        z = torch.where(src, x, s.z)
        v_tgt = self.path.velocity(x, z, t)
        w = self.scale_dist.sample(B, device=dev)
        dec = torch.rand(B, device=dev) < cfg.decode_prob
        use_sc = (torch.rand(B, device=dev) < cfg.self_cond_prob) & ~dec
        sc = torch.where(src, x, torch.zeros_like(x)).detach()

        # 3. self-conditioning with training-time CFG on it (paper Alg. 3)
        if bool(use_sc.any()):
            idx = use_sc.nonzero().squeeze(1)
            with torch.no_grad():
                zi, ti, wi, xi = z[idx].detach(), t[idx], w[idx], x[idx].detach()
                si = src if src.shape[0] == 1 else src[idx]
                x_u = torch.where(si, xi, self.predict(zi, sc[idx], ti, wi).x)
                v_u = self.path.velocity(x_u, zi, ti)
                v_c = self.predict(zi, x_u, ti, wi).v
            v_tgt = v_tgt.index_copy(0, idx, sc_cfg_target(v_tgt[idx], v_c, v_u, wi))
            sc = sc.index_copy(0, idx, x_u)

        # 4. decode branch rows: per-token corruption, t = 1, decode mode, zero SC channel
        t_in, z_in, sc_in = t, z, sc
        if bool(dec.any()):
            p = self.decode_level_dist.sample((B, L, 1), device=dev)
            z_dec = p * x + (1 - p) * self.decode_noise_scale * torch.randn_like(x)
            rows = dec.view(B, 1, 1)
            z_in = torch.where(rows, z_dec, z)
            sc_in = torch.where(rows, torch.zeros_like(sc), sc)
            t_in = torch.where(dec, torch.ones_like(t), t)

        # 5. one gradient pass for both branches, losses masked by row
        pred = self.predict(z_in, sc_in, t_in, w, dec.float())
        per_token = (pred.v - v_tgt).pow(2).mean(-1)  # (B, L)
        mse = per_token
        if bool(dec.any()):
            logits = self.decode_logits(pred.hidden[dec]).float()
            ce = F.cross_entropy(logits.transpose(1, 2), tokens[dec], reduction="none")
            ce_full = torch.zeros_like(per_token).index_put((dec.nonzero().squeeze(1),), ce)
            per_token = torch.where(dec.view(B, 1), ce_full, per_token)
        loss = (per_token * mask).sum() / mask.sum().clamp_min(1.0)

        with torch.no_grad():  # diagnostics (per-branch token means)
            den_mask = mask * (~dec).float().view(B, 1)
            dec_mask = mask * dec.float().view(B, 1)
            self.last_losses = {
                "mse": (mse * den_mask).sum() / den_mask.sum().clamp_min(1.0),
                "ce": (per_token * dec_mask).sum() / dec_mask.sum().clamp_min(1.0),
            }
        return loss
