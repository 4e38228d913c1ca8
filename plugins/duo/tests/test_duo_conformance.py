"""The dlmbench conformance kit run against the installed ``duo`` plugin."""

import pytest
import torch

from dlmbench.testing.conformance import ModelConformance


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TestDuoConformance(ModelConformance):
    model_name = "duo"
