"""pytest plugin shipped with dlmbench: ``slow`` and ``gpu`` markers, opt-in flags, and
the ``one_thread`` fixture.

``@pytest.mark.slow`` tests run only with ``--run-slow``; ``@pytest.mark.gpu`` tests
run only with ``--run-gpu`` and skip with a reason when CUDA is absent. A module opts into
one intra-op thread with ``pytestmark = pytest.mark.usefixtures("one_thread")`` (the
conformance kit does so for every check).
"""

from __future__ import annotations

import pytest

# The conformance kit's failures show the values they compared (pytest's assertion rewriting).
pytest.register_assert_rewrite("dlmbench.testing.conformance")


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


@pytest.fixture
def one_thread():
    """Run the test on one intra-op torch thread, then restore the previous count.

    Tests run tiny tensors, which gain nothing from more threads; on a loaded machine
    (a 2-core CI box shared with other jobs) the threads of one process mostly wait on
    each other and make such tests 10-100x slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
