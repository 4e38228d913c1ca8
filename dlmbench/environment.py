"""Facts about where a result was produced, and the Hugging Face offline switch.

The one module (with the CLI) that reads process environment variables: the user's
``HF_*`` switches are parsed here, once, into a :class:`~dlmbench.context.RunContext`.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from typing import Mapping

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from dlmbench.errors import ConfigError

        raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """The device as records state it: a GPU's name, or the CPU's model, the instruction
    set torch's kernels use (AVX2, AVX512, ...: it changes float rounding) and the threads."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"cpu:{cpu_model()} {capability} x{torch.get_num_threads()} threads"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """``model name`` from ``/proc/cpuinfo`` where there is one, else the platform's word."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def use_threads(n: int) -> None:
    """Run torch on ``n`` CPU threads, intra- and inter-op. The inter-op pool can be sized
    only before its first use: a later call that cannot resize it leaves it as it was."""
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:
            pass


# glibc's mallopt parameters (<malloc.h>)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc's malloc keep the memory a forward pass frees, for the next one to reuse.

    By default glibc serves each block over its mmap threshold (128 KiB, adapted up to
    32 MiB) with fresh pages and returns them to the system on free, so every activation
    of every step pays page faults on memory just released: about 15% of a tiny model's CPU
    forward. Raising the mmap and trim thresholds once per process keeps such blocks in the
    heap. Values are unchanged (torch aligns CPU tensors to 64 bytes wherever they live);
    True where it applied (Linux with glibc), False elsewhere."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to tune
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


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


#: The values ``huggingface_hub`` reads as true (``constants._is_true``: upper-cased, not stripped).
HUB_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})


def _is_true(value: str | None) -> bool:
    return value is not None and value.upper() in HUB_TRUE_VALUES


def hub_offline(env: Mapping[str, str] | None = None) -> bool:
    """Whether the user switched the Hugging Face hub off, parsed as ``huggingface_hub``
    does (``HF_HUB_OFFLINE``, falling back to ``TRANSFORMERS_OFFLINE`` when it is unset or
    empty), or switched off ``datasets`` with ``HF_DATASETS_OFFLINE``.

    The one offline check of dlmbench: components with a :class:`~dlmbench.RunContext`
    read ``context.offline``, which the context took from here.
    """
    env = os.environ if env is None else env
    return _is_true(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")) or _is_true(
        env.get("HF_DATASETS_OFFLINE"))


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def switch_hub_libraries_offline() -> None:
    """Tell ``huggingface_hub``, ``transformers`` and ``datasets`` to fail at once instead
    of retrying for minutes. Only the CLI calls this, when the hub cannot be reached."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    import importlib
    import sys

    for mod, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                       ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if mod in sys.modules:  # read once at import: set the flag of an imported module too
            m = importlib.import_module(mod)
            for name in names:
                if hasattr(m, name):
                    setattr(m, name, True)

