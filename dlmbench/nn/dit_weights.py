"""Loading the released MDLM / Duo checkpoints into :class:`dlmbench.nn.dit.DiT`.

The published Hugging Face repositories (``kuleshov-group/mdlm-owt``, ``s-sahoo/duo``,
``s-sahoo/duo-distilled``) hold a ``config.json`` and a fp32 ``model.safetensors`` whose
keys are the DiT's parameter names under a ``backbone.`` prefix (the DiT is the models'
``backbone`` attribute). We read those two files only: the repositories'
``modeling_*.py`` is never downloaded or executed (no ``trust_remote_code``), and no
pickle is unpickled.

``source`` may be a directory holding ``model.safetensors`` (and ``config.json``), a
``.safetensors`` file, or a hub name. A hub name is resolved through ``huggingface_hub``
when it is installed: first from the local cache, then, unless the hub is switched off
(:func:`dlmbench.environment.hub_offline`), by downloading. When that fails,
:class:`dlmbench.errors.HubUnavailableError` says why (the library's own error) and how
to pass a local path instead.

Both released models share the data layout of GPT-2 (:func:`gpt2_spec`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dlmbench.data import DataSpec
from dlmbench.environment import hub_offline
from dlmbench.errors import CheckpointError, HubUnavailableError

PREFIX = "backbone."
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: Buffers we can recompute, so a checkpoint may leave them out.
OPTIONAL_KEYS = ("rotary_emb.inv_freq",)


def gpt2_spec(seq_len: int = 1024, vocab_size: int = 50258, prefix_len: int = 0) -> DataSpec:
    """The released models' data layout: GPT-2 ids, ``<|endoftext|>`` = 50256 as BOS and
    EOS, and one id appended at 50257 (K = 50258), which MDLM uses as ``[MASK]`` and Duo
    as ``[PAD]``, a real class of its uniform noise and prior (``dataloader.py`` of
    ``kuleshov-group/mdlm@c112c52`` and ``s-sahoo/duo@7c9b498``). The spec's ``mask_id``
    is 50257 for both: it must lie in the vocabulary, and Duo never uses it."""
    return DataSpec(vocab_size=vocab_size, seq_len=seq_len, pad_id=50257, bos_id=50256,
                    eos_id=50256, mask_id=50257, prefix_len=prefix_len)


def _hub_error(name: str, why: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot fetch {name!r} from the Hugging Face Hub: {why}. Download {WEIGHTS_NAME} and "
        f"{CONFIG_NAME} of that repository elsewhere and pass the local directory instead."
    )


def resolve_checkpoint(source: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """The safetensors file named by ``source`` and its ``config.json`` (None if absent)."""
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"directory {str(path)!r} has no {WEIGHTS_NAME}")
        return weights, _read_config(path / CONFIG_NAME)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{str(path)!r} is not a .safetensors file; only safetensors checkpoints are "
                "loaded (Lightning .ckpt pickles are not)"
            )
        return path, _read_config(path.parent / CONFIG_NAME)
    name = str(source)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint {name!r} is neither an existing path nor a hub name 'owner/repo'")
    return _from_hub(name)


def _from_hub(name: str) -> tuple[Path, dict[str, Any] | None]:
    try:
        import huggingface_hub
    except ImportError:
        raise _hub_error(name, "huggingface_hub is not installed") from None
    patterns = [WEIGHTS_NAME, CONFIG_NAME]
    try:  # the local cache first: instant, and works offline
        local = huggingface_hub.snapshot_download(name, allow_patterns=patterns, local_files_only=True)
        if (Path(local) / WEIGHTS_NAME).is_file():
            return Path(local) / WEIGHTS_NAME, _read_config(Path(local) / CONFIG_NAME)
    except Exception:  # noqa: BLE001 - not cached (the exception type varies by version)
        pass
    if hub_offline():
        raise _hub_error(name, "offline mode is on (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or "
                               "HF_DATASETS_OFFLINE) and it is not in the local cache")
    try:
        local = huggingface_hub.snapshot_download(name, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - network, auth or missing-repo errors
        raise _hub_error(name, f"{type(exc).__name__}: {exc}") from None
    weights = Path(local) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"hub repository {name!r} has no {WEIGHTS_NAME}")
    return weights, _read_config(Path(local) / CONFIG_NAME)


def _read_config(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: {exc}") from None


def dit_kwargs_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Our DiT/config field values from a released ``config.json`` (MDLMConfig/DUOConfig)."""
    required = ("vocab_size", "hidden_dim", "cond_dim", "n_blocks", "n_heads")
    missing = [k for k in required if k not in config]
    if missing:
        raise CheckpointError(f"config.json lacks {missing}; is this an MDLM/Duo checkpoint?")
    out = {
        "vocab_size": int(config["vocab_size"]),
        "hidden_size": int(config["hidden_dim"]),
        "cond_dim": int(config["cond_dim"]),
        "n_blocks": int(config["n_blocks"]),
        "n_heads": int(config["n_heads"]),
    }
    if "dropout" in config:
        out["dropout"] = float(config["dropout"])
    if "model_length" in config:
        out["seq_len"] = int(config["model_length"])
    if "time_conditioning" in config:
        out["time_conditioning"] = bool(config["time_conditioning"])
    return out


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{str(weights)!r} is not a readable safetensors file ({exc})") from None


def map_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``backbone.`` prefix; keys without it are kept as they are (and then
    reported as unexpected by :func:`check_state_dict` unless they already match)."""
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in state.items()}


def check_state_dict(network: torch.nn.Module, state: dict[str, torch.Tensor],
                     names: dict[str, str] | None = None) -> None:
    """Raise :class:`CheckpointError` naming missing keys, extra keys and wrong shapes.

    ``state`` uses the network's own names; ``names`` maps them back to the checkpoint's
    (prefixed) names for the message.
    """
    names = names or {}
    expected = network.state_dict()
    missing = [PREFIX + k for k in expected if k not in state and k not in OPTIONAL_KEYS]
    extra = [names.get(k, k) for k in state if k not in expected]
    shapes = [
        f"{names.get(k, k)}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    if shapes:
        problems.append("wrong shapes: " + "; ".join(shapes))
    if problems:
        raise CheckpointError("checkpoint does not match the DiT: " + ", ".join(problems))


def load_dit_state(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a released (``backbone.``-prefixed) state dict into ``network``, strictly."""
    mapped = map_official_keys(state)
    names = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): k for k in state}
    check_state_dict(network, mapped, names)
    own = network.state_dict()
    with torch.no_grad():
        for key, value in mapped.items():
            own[key].copy_(value.to(own[key].dtype))
