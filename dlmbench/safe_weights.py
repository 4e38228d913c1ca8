"""Pretrained weights as safetensors only: nothing a run loads can unpickle.

``transformers`` falls back to ``pytorch_model.bin`` (a pickle, which can run code when
loaded) unless told ``use_safetensors=True``; every model dlmbench loads with
``from_pretrained`` goes through :func:`from_pretrained_safetensors`, and a local
directory that holds only pickled weights is refused with the one-time conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlmbench.errors import ConfigError

PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def refuse_pickled_directory(path: str | Path, what: str) -> None:
    """A :class:`ConfigError` when ``path`` is a directory with pickled weights and no safetensors."""
    path = Path(path).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    found = [name for name in PICKLED if (path / name).exists()]
    if found:
        raise ConfigError(
            f"{what} {str(path)!r} holds only pickled weights ({', '.join(found)}), which dlmbench never "
            "loads; if you trust the file, convert it to safetensors once with transformers (load it with "
            "use_safetensors=False, then save_pretrained(path, safe_serialization=True))"
        )


def from_pretrained_safetensors(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(name, use_safetensors=True, **kwargs)``, after refusing a
    local directory of pickles with the fix."""
    refuse_pickled_directory(name, what)
    return loader.from_pretrained(name, use_safetensors=True, **kwargs)
