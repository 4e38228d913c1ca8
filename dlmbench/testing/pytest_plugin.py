"""pytest plugin shipped with dlmbench: ``slow`` and ``gpu`` markers, opt-in flags.

``@pytest.mark.slow`` tests run only with ``--run-slow``; ``@pytest.mark.gpu`` tests
run only with ``--run-gpu`` and skip with a reason when CUDA is absent.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("dlmbench")
    group.addoption("--run-slow", action="store_true", default=False, help="run @pytest.mark.slow tests")
    group.addoption("--run-gpu", action="store_true", default=False, help="run @pytest.mark.gpu tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (opt in with --run-slow)")
    config.addinivalue_line("markers", "gpu: needs CUDA (opt in with --run-gpu)")


def pytest_collection_modifyitems(config, items):
    import torch

    run_slow = config.getoption("--run-slow")
    run_gpu = config.getoption("--run-gpu")
    cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow"))
        if "gpu" in item.keywords:
            if not run_gpu:
                item.add_marker(pytest.mark.skip(reason="gpu: run with --run-gpu on a CUDA machine"))
            elif not cuda:
                item.add_marker(pytest.mark.skip(reason="gpu: CUDA is not available"))
