"""The committed leaderboards are rendered from the committed records, unchanged.

``leaderboard/records/<name>/`` holds the cell and model records (not the samples) of
the run behind ``leaderboard/<name>.md``; re-rendering them with today's code must give
the committed table to the byte, so a change to the records, their schema or the
renderer cannot alter a published number unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlmbench.leaderboard import render_markdown
from dlmbench.results import load_records

BOARD = Path(__file__).resolve().parents[1] / "leaderboard"
RECORDED = sorted(p.name for p in (BOARD / "records").iterdir() if (p / "cells").is_dir())


def produced_by(table: str) -> str:
    """The command a committed table states above itself."""
    lines = table.splitlines()
    start = lines.index("Produced by:") + 2
    assert lines[start - 1] == "" and lines[start] == "```"
    return "\n".join(lines[start + 1: lines.index("```", start + 1)])


# leaderboards rendered from records (an audit table is written by `dlmbench audit` from its own re-runs)
TABLES = sorted(p.stem for p in BOARD.glob("*.md") if p.name != "README.md" and not p.stem.endswith("-audit"))


def test_every_committed_table_has_its_records():
    """No table is published without the records it can be re-rendered from."""
    assert "default" in TABLES
    assert [t for t in TABLES if t not in RECORDED] == []


@pytest.mark.parametrize("name", RECORDED)
def test_a_committed_table_re_renders_unchanged_from_its_records(name):
    committed = (BOARD / f"{name}.md").read_text()
    cells, models = load_records([BOARD / "records" / name])
    assert render_markdown(cells, models, command=produced_by(committed)) == committed
