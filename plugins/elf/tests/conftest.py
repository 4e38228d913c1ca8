"""ELF test default: no hub access (a named T5 must come from a local directory)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
