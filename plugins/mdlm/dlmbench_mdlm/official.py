"""Loading the released MDLM weights (the Hugging Face repository ``kuleshov-group/mdlm-owt``).

The Hugging Face checkpoint is a fp32 ``model.safetensors`` with ``backbone.*`` keys and a
``config.json`` (``MDLMConfig``: ``vocab_size=50258``, ``model_length=1024``,
``hidden_dim=768``, ``cond_dim=128``, ``n_blocks=12``, ``n_heads=12``, ``dropout=0.1``,
``time_conditioning=false``). We build our :class:`MDLM` from that config and copy the
weights by name; the repository's remote code is never used. The released network
returns raw logits; :class:`MDLM` applies SUBS itself, as the HF card requires.

The data spec is GPT-2's (:func:`dlmbench.nn.dit_weights.gpt2_spec`): 50,257 tokenizer
ids plus ``[MASK]`` at 50,257; BOS = EOS = ``<|endoftext|>`` = 50,256.
"""

from __future__ import annotations

import os

from dlmbench.data import DataSpec
from dlmbench.nn.dit_weights import (
    dit_kwargs_from_config,
    gpt2_spec,
    load_dit_state,
    read_state_dict,
    resolve_checkpoint,
)

from dlmbench_mdlm.model import MDLM, MDLMConfig

HUB_NAME = "kuleshov-group/mdlm-owt"


def load_official(source: str | os.PathLike = HUB_NAME, *, spec: DataSpec | None = None, **overrides) -> MDLM:
    """An :class:`MDLM` holding the released weights from ``source``.

    ``source``: a directory with ``model.safetensors`` (+ ``config.json``), a
    ``.safetensors`` file, or a hub name. Without a ``config.json`` the ``small`` preset
    is assumed. ``overrides`` set other :class:`MDLMConfig` fields (e.g. ``bf16``).
    Raises :class:`~dlmbench.errors.CheckpointError` on a mismatched checkpoint and
    :class:`~dlmbench.errors.HubUnavailableError` when a hub name cannot be fetched.
    """
    weights, hf_config = resolve_checkpoint(source)
    fields = dit_kwargs_from_config(hf_config) if hf_config is not None else {}
    vocab_size = fields.pop("vocab_size", 50258)
    seq_len = fields.pop("seq_len", 1024)
    fields.setdefault("time_conditioning", False)
    config = MDLMConfig.from_preset("small", **{**fields, **overrides})
    spec = spec if spec is not None else gpt2_spec(seq_len=seq_len, vocab_size=vocab_size)
    model = MDLM(config, spec)
    load_dit_state(model.network, read_state_dict(weights))
    return model.eval()
