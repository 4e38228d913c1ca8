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


def _copy(record, **update):
    return record.model_copy(update=update)


def test_cells_of_other_data_are_never_averaged_into_one_section(toy_config, toy_registry):
    cfg = toy_config()
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    assert {r.text_fingerprint for r in records} == {records[0].task_fingerprint}  # a fixed vocabulary
    other = [_copy(r, task_fingerprint="feedfacefeedface", text_fingerprint="feedfacefeedface",
                   cell_id=r.cell_id + "x") for r in records]
    text = render_markdown(records + other)
    assert text.count("## Task `toy-count`") == 2
    assert "data `feedfacefeedface`" in text and f"data `{records[0].task_fingerprint}`" in text
    # the same text read through another tokenizer (other ids, same text): one section
    views = [_copy(r, task_fingerprint="feedfacefeedface", cell_id=r.cell_id + "y",
                   label=r.label + " T5") for r in records]
    assert render_markdown(records + views).count("## Task `toy-count`") == 1


def test_a_metric_scored_with_other_settings_gets_its_own_table(toy_config, toy_registry):
    cfg = toy_config()
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    model_cells = [r for r in records if r.model == "toy"]
    changed = []
    for r in model_cells[:2]:  # two cells judged another way: not pooled with the rest
        result = r.metrics["starts-right"].model_copy(update={"config": {"judge": "other"}})
        changed.append(_copy(r, metrics={"starts-right": result}))
    kept = [r for r in records if r not in model_cells[:2]]
    text = render_markdown(kept + changed)
    assert text.count("### starts-right ↑") == 2
    assert 'Settings: `{"judge": "other"}`' in text and "Settings: `{}`" in text


def test_a_command_is_stated_only_above_the_sections_it_produced(toy_config, toy_registry):
    a = toy_config()
    b = toy_config(budget={"num_samples": 5})
    for cfg in (a, b):
        Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    cells, models = load_records([a.out_dir])  # one directory, reused with another budget
    text = render_markdown(cells, models, command="dlmbench run --num-samples 5", command_budget=b.budget_hash())
    sections = text.split("## Task ")[1:]
    (mine,) = [s for s in sections if s.startswith(f"`toy-count` (budget `{b.budget_hash()}`")]
    assert "dlmbench run --num-samples 5" in mine
    assert sum("Produced by" in s for s in sections) == 1 and not text.startswith("Produced by")


def test_reusing_a_run_directory_with_another_budget_says_so(toy_config, toy_registry):
    Runner(toy_config(), toy_registry, echo=lambda *_: None, progress=False).run()
    messages = []
    b = toy_config(budget={"num_samples": 5})
    Runner(b, toy_registry, echo=messages.append, progress=False).run()
    assert any("also holds results of budget(s)" in m and "never averaged" in m for m in messages)


def test_two_entries_of_one_sampler_with_other_settings_are_two_rows(toy_config, toy_registry):
    """Once, the row was model/sampler: two settings of one sampler were averaged as seeds."""
    cfg = toy_config(models=["toy", {"name": "toy", "sampler_options": {"cfg_passes": 2}}])
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    text = render_markdown(records)
    assert "| toy/reveal (cfg_passes=2) " in text and "| toy/reveal  " in text
    assert "NFE 4 " in text and "NFE 8 " in text  # each row its own NFE, not a mean of both


def test_one_label_given_to_two_setups_is_split_and_told_apart(toy_config, toy_registry):
    cfg = toy_config(models=[{"name": "toy", "label": "same"},
                             {"name": "toy", "label": "same", "sampler_options": {"cfg_passes": 2}}])
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    text = render_markdown(records)
    rows = [line for line in text.splitlines() if line.startswith("| same [checkpoint ")]
    assert len(rows) == 2 and any('"cfg_passes": 2' in r for r in rows)


def _with_result(record, metric, **update):
    results = dict(record.metrics)
    results[metric] = results[metric].model_copy(update=update)
    return record.model_copy(update={"metrics": results})


def test_a_value_on_fewer_samples_shows_its_n_and_an_undefined_seed_is_named(toy_config, toy_registry):
    cfg = toy_config()
    records = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    row = [r for r in records if r.model == "toy" and r.steps == 2]
    assert len(row) == 2 and row[0].num_samples == cfg.budget.num_samples
    seed0, seed1 = sorted(row, key=lambda r: r.seed)
    drawn = 2 * cfg.budget.num_samples
    changed = [_with_result(seed0, "starts-right", n=1, value=0.25),
               _with_result(seed1, "starts-right", n=0, value=None, undefined="no grammatical sample")]
    others = [r for r in records if r not in row]
    line = next(x for x in render_markdown(others + changed).splitlines() if x.startswith("| toy/reveal"))
    # the seed that has a value is shown alone (no spread over one seed), never averaged with a NaN
    assert f"| 0.25 (n=1/{drawn}; seed {seed1.seed} undefined: no grammatical sample) · NFE 2" in line
    everything = [_with_result(r, "starts-right", n=0, value=None, undefined="none at all") for r in row]
    line = next(x for x in render_markdown(others + everything).splitlines() if x.startswith("| toy/reveal"))
    assert f"| undefined (n=0/{drawn}; seed {seed0.seed} undefined: none at all; seed {seed1.seed} undefined" in line
    # a value on every drawn sample does not repeat its n
    assert "(n=" not in next(x for x in render_markdown(records).splitlines() if x.startswith("| toy/reveal"))
