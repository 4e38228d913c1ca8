"""ELF test defaults: no hub access, and one intra-op thread.

On the shared 2-core CI machine two OpenMP threads contend with other jobs and run the
small tensors here 10-100x slower than one thread; the thread count is restored after
each test.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _elf_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
