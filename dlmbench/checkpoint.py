"""Checkpoints as safetensors, stamped with the hash of what produced them.

The file's metadata holds the model name, its config, the data spec and the training
key; :func:`load_checkpoint` refuses a file whose stamp does not match the model being
built, so a cached checkpoint is never silently reused for another configuration.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import sys
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from dlmbench.atomic import FILE_MODE, temp_file
from dlmbench.config import Budget, stable_hash
from dlmbench.data import DataSpec
from dlmbench.errors import CheckpointError
from dlmbench.model import Model
from dlmbench.names import check_name, inside

META_KEY = "dlmbench"


def checkpoint_key(model_name: str, config: Any, spec: DataSpec, training: dict[str, Any]) -> dict:
    return {
        "model": model_name,
        "config": config.model_dump(mode="json"),
        "spec": spec.to_dict(),
        "training": training,
    }


def checkpoint_hash(key: dict) -> str:
    return stable_hash(key, n=16)


@dataclass(frozen=True)
class CheckpointSlot:
    """Where the checkpoint of one model setup lives, and the key stamped into it."""

    path: Path
    key: dict

    @property
    def digest(self) -> str:
        return checkpoint_hash(self.key)

    @property
    def record_path(self) -> Path:
        """The model record beside the checkpoint (its training facts)."""
        return self.path.with_suffix(".json")


#: Core files whose code shapes trained weights, besides the model plugin's own package.
CORE_TRAINING = ("training.py", "ema.py", "model.py", "data.py", "schedule.py", "prefix.py", "nn")


def _source_digest(paths: Iterable[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def code_fingerprint(model_cls: type) -> dict[str, str]:
    """The code that trains ``model_cls``: its plugin's name, version and a hash of the
    plugin package's source files, and a hash of the core's training code. Part of every
    checkpoint key, so editing ``loss`` (or the training loop) never reuses old weights."""
    import dlmbench

    package = Path(sys.modules[model_cls.__module__].__file__).resolve().parent
    core = Path(dlmbench.__file__).resolve().parent
    top = model_cls.__module__.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top, [])
    version = importlib.metadata.version(dists[0]) if dists else dlmbench.__version__
    plugin_files = [p for p in package.rglob("*.py") if "tests" not in p.relative_to(package).parts]
    core_files = [p for name in CORE_TRAINING for p in ([core / name] if name.endswith(".py") else
                                                         (core / name).rglob("*.py"))]
    return {"plugin": top, "version": version, "source": _source_digest(plugin_files, package),
            "core": _source_digest(core_files, core)}


def checkpoint_slot(model: Model, budget: Budget, precision: str, root: Path, data_fingerprint: str,
                    train_steps: int | None = None) -> CheckpointSlot:
    """The cached checkpoint for ``model`` trained under ``budget`` (for ``train_steps``
    when a bytes budget gives this model its own) at ``precision`` on the data with
    ``data_fingerprint``: the key holds the model config, the data spec and fingerprint,
    the code that trains it (:func:`code_fingerprint`) and every training fact that
    changes the weights."""
    training = {**budget.training_key(train_steps), "data": data_fingerprint, "code": code_fingerprint(type(model))}
    if precision != "fp32":
        training = {**training, "precision": precision}
    key = checkpoint_key(model.name, model.config, model.spec, training)
    name = check_name(model.name, "model name")
    return CheckpointSlot(inside(root, f"{name}-{checkpoint_hash(key)}.safetensors"), key)


def save_checkpoint(model: Model, path: str | Path, key: dict, extra: dict | None = None) -> str:
    """Write ``model``'s weights atomically; returns the checkpoint hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = checkpoint_hash(key)
    meta = {META_KEY: json.dumps({"key": key, "hash": digest, "extra": extra or {}})}
    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        save_model(model, tmp, metadata=meta)
        os.chmod(tmp, FILE_MODE)  # as an ordinary file, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def file_sha256(path: str | Path) -> str:
    """The sha256 of a checkpoint file, stored in its model record and checked on reuse."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: str | Path) -> dict:
    """The dlmbench stamp of a checkpoint; CheckpointError if missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; train it with `dlmbench train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or not a safetensors file ({exc}); "
            "delete it and re-run to retrain"
        ) from None
    if META_KEY not in meta:
        raise CheckpointError(f"checkpoint {str(path)!r} has no dlmbench metadata; it was not written by dlmbench")
    return json.loads(meta[META_KEY])


def load_checkpoint(model: Model, path: str | Path, key: dict | None = None) -> dict:
    """Load weights into ``model``; with ``key``, refuse a checkpoint made for another setup."""
    meta = read_metadata(path)
    if key is not None and meta["hash"] != checkpoint_hash(key):
        raise CheckpointError(
            f"checkpoint {str(path)!r} was made for a different configuration "
            f"(hash {meta['hash']} != {checkpoint_hash(key)}); delete it or change --cache"
        )
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} could not be loaded: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit model {model.name!r}: "
            f"missing keys {sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}"
        )
    return meta


def state_dict_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
