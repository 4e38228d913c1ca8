"""Progress you can read: a partial leaderboard during a run, and the defaults in --help."""

from __future__ import annotations

from click.testing import CliRunner

from dlmbench.cli import cli, main
from dlmbench.runner import Runner


def test_on_cell_is_told_after_every_written_cell(toy_config, toy_registry):
    cfg = toy_config()
    seen = []
    Runner(cfg, toy_registry, echo=lambda *_: None, progress=False,
           on_cell=lambda r: seen.append((r.cell_id, (cfg.out_dir / "cells" / f"{r.cell_id}.json").exists()))).run()
    assert len(seen) == 5 and all(written for _, written in seen)


def test_a_running_run_keeps_a_partial_leaderboard(tmp_path, monkeypatch):
    """Once, leaderboard.md appeared only at the very end of a run (hours at paper scale)."""
    monkeypatch.chdir(tmp_path)
    boards = []
    run_cell = Runner.run_cell

    def spy(self, common, model, sampler, data, metrics, steps, seed, cid):
        board = tmp_path / "runs" / "p" / "leaderboard.md"
        boards.append(board.read_text() if board.exists() else None)
        return run_cell(self, common, model, sampler, data, metrics, steps, seed, cid)

    monkeypatch.setattr(Runner, "run_cell", spy)
    main_args = ["run", "--models", "ar", "--name", "p", "--steps", "1,2", "--seeds", "0", "--num-samples", "4",
                 "--train-tokens", "2048", "--no-progress"]
    main(main_args)  # returns on success (exits only on failure)
    assert boards[0] is not None and "data (held-out)" in boards[0]  # written after the data row
    assert "steps=1" in boards[1] and "ar/ancestral" in boards[1]  # and after the first model cell


def test_run_help_states_the_preset_defaults():
    text = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "tiny: task grammar; steps 32,1024; seeds 0,1; 128 samples per cell; 2,457,600 training tokens" in text
