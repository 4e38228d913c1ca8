"""Facts about where a result was produced, and the Hugging Face offline switch."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from dlmbench.errors import ConfigError

        raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """``git describe --always --dirty`` of the current directory, if it is a checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(plugins: dict[str, str] | None = None) -> dict[str, str]:
    import dlmbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dlmbench": dlmbench.__version__,
        **{f"plugin:{k}": v for k, v in sorted((plugins or {}).items())},
    }


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    try:
        socket.setdefaulttimeout(timeout)
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def set_hub_offline_if_unreachable() -> bool:
    """Make hub look-ups fail fast (not after ~23 s of retries) when offline.

    Respects an explicit ``HF_HUB_OFFLINE`` and ``DLMBENCH_ONLINE=1``. Returns True
    when the offline switches are (now) set.
    """
    if os.environ.get("DLMBENCH_ONLINE") == "1":
        return False
    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ["HF_HUB_OFFLINE"] not in ("0", "")
    if hub_reachable():
        return False
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    return True


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
