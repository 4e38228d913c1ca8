"""Leaderboard rendering from stored records only."""

from __future__ import annotations

import statistics

from dlmbench.leaderboard import render_markdown, render_plot
from dlmbench.results import load_records
from dlmbench.runner import Runner


def test_tables_state_budget_and_show_mean_spread_nfe(toy_config, toy_registry, tmp_path):
    cfg = toy_config()
    Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    cells, models = load_records([cfg.out_dir])
    text = render_markdown(cells, models, command="dlmbench run --models toy")
    assert "dlmbench run --models toy" in text
    assert "training tokens 1,280 (= batch 8 x length 8 x 20 steps)" in text
    assert "### starts-right ↑" in text
    assert "| data (held-out)" in text and "toy/reveal" in text
    header = next(line for line in text.splitlines() if line.startswith("| model/sampler"))
    assert "steps=2" in header and "steps=4" in header
    row = next(line for line in text.splitlines() if line.startswith("| toy/reveal"))
    values = [c.metrics["starts-right"].value for c in cells if c.model == "toy" and c.steps == 2]
    expected = f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g} · NFE 2"
    assert expected in row
    assert "### Training and likelihood bounds" in text
    training = text[text.index("### Training and likelihood bounds"):]
    assert "| toy/reveal " in training  # the checkpoint is named by the rows sampled from it
    png = render_plot(cells, tmp_path / "plot.png")
    assert png.exists() and png.stat().st_size > 1000


def test_failed_cells_are_listed(toy_config, toy_registry):
    cfg = toy_config(models=[{"name": "toy", "options": {"fail_in": "sample"}}])
    Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    cells, models = load_records([cfg.out_dir])
    text = render_markdown(cells, models)
    assert "## Failed cells" in text and "failing on purpose in sample" in text


def test_records_from_several_runs_with_different_budgets_get_separate_sections(toy_config, toy_registry):
    a = toy_config()
    b = toy_config(out=str(a.out_dir.parent / "run2"), budget={"num_samples": 5})
    for cfg in (a, b):
        Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    cells, models = load_records([a.out_dir, b.out_dir])
    text = render_markdown(cells, models)
    assert text.count("## Task `toy-count`") == 2
