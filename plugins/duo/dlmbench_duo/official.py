"""Loading the released Duo weights (the Hugging Face repositories ``s-sahoo/duo``,
``s-sahoo/duo-distilled``).

The Hugging Face checkpoints hold a fp32 ``model.safetensors`` with ``backbone.*`` keys
(the same layout as MDLM-OWT) and a ``config.json`` (``DUOConfig``: ``vocab_size=50258``,
``model_length``, ``hidden_dim``, ``cond_dim``, ``n_blocks``, ``n_heads``, ``dropout``,
``var_min``, ``causal``). We build our :class:`Duo` from it (time-conditioned, sigma =
-log alpha_t) and copy the weights by name; the remote code is never used. Id 50257 is
``[PAD]``, a real class of the uniform noise and the prior
(:func:`dlmbench.nn.dit_weights.gpt2_spec`).
"""

from __future__ import annotations

import os

from dlmbench.data import DataSpec
from dlmbench.errors import CheckpointError
from dlmbench.nn.dit_weights import (
    dit_kwargs_from_config,
    gpt2_spec,
    load_dit_state,
    read_state_dict,
    resolve_checkpoint,
)

from dlmbench_duo.model import Duo, DuoConfig

HUB_NAME = "s-sahoo/duo"
DISTILLED_HUB_NAME = "s-sahoo/duo-distilled"


def load_official(source: str | os.PathLike = HUB_NAME, *, spec: DataSpec | None = None, **overrides) -> Duo:
    """A :class:`Duo` holding the released weights from ``source`` (path or hub name).

    Without a ``config.json`` the ``small`` preset is assumed; ``overrides`` set other
    :class:`DuoConfig` fields. Raises :class:`~dlmbench.errors.CheckpointError` on a
    mismatched checkpoint and :class:`~dlmbench.errors.HubUnavailableError` when a hub
    name cannot be fetched.
    """
    weights, hf_config = resolve_checkpoint(source)
    fields = dit_kwargs_from_config(hf_config) if hf_config is not None else {}
    if hf_config is not None and hf_config.get("causal"):
        raise CheckpointError(f"{str(source)!r} is a causal (AR) checkpoint, not Duo")
    vocab_size = fields.pop("vocab_size", 50258)
    seq_len = fields.pop("seq_len", 1024)
    fields.pop("time_conditioning", None)  # Duo is always time-conditioned
    config = DuoConfig.from_preset("small", **{**fields, **overrides})
    spec = spec if spec is not None else gpt2_spec(seq_len=seq_len, vocab_size=vocab_size)
    model = Duo(config, spec)
    load_dit_state(model.network, read_state_dict(weights))
    return model.eval()
