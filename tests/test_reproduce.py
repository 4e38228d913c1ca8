"""README command 1 reproduces on a fresh cache: the same command at a reduced budget
(tests/fixtures/reproduce/config.yaml) gives every cell's every metric exactly as the
committed expected.json has it. One torch thread is the run's default (``--threads``), so
the environment's thread count cannot move the numbers; what still can (the CPU's
kernels, the torch build) is said in leaderboard/README.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "reproduce"
sys.path.insert(0, str(FIXTURE))

import make  # noqa: E402 - the fixture's own maker: one definition of "the run" and "its cells"


def test_a_fresh_run_reproduces_the_committed_cells_value_for_value(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # ignored: the run sets its own thread count
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert make.cells_of(make.run(tmp_path)) == expected
