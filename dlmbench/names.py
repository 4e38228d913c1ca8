"""Names that become file names: a run, a model, a sampler, a task, a metric.

A name reaches the disk as ``runs/<run>/``, ``cells/<model>-<sampler>-...json`` and
``checkpoints/<model>-<hash>.safetensors``, so it is held to a safe character set before
any path is built from it, and every path built from one is checked to stay inside its
root. ``--name ../../x`` or a plugin model named ``../x`` is refused, never followed.
"""

from __future__ import annotations

import re
from pathlib import Path

from dlmbench.errors import ConfigError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,119}")
RULE = "letters, digits and '_', '-', '.', '+' (not first), at most 120 characters"


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and ".." not in name


def check_name(name: str, what: str) -> str:
    """``name`` itself, or a :class:`ConfigError` naming ``what`` and the rule."""
    if not is_safe_name(name):
        raise ConfigError(f"{what} {name!r} is not a safe name: use {RULE}, e.g. my-run")
    return name


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts``, refused when it would resolve outside ``root``."""
    base = Path(root).resolve()
    resolved = base.joinpath(*parts).resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigError(f"{'/'.join(parts)!r} would be written outside {str(root)!r}; use a plain name")
    return Path(root).joinpath(*parts)
