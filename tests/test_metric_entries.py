"""Metrics as entries with options, and scoring stored samples without sampling again."""

from __future__ import annotations

import pytest

from dlmbench.config import MetricEntry, build_run_config
from dlmbench.errors import ConfigError
from dlmbench.runner import Runner


def run(cfg, registry):
    return Runner(cfg, registry, echo=lambda *_: None, progress=False).run()


@pytest.mark.parametrize("raw, expected", [
    ("bleu", {"name": "bleu", "options": {}}),
    ("bleu:lowercase=true", {"name": "bleu", "options": {"lowercase": True}}),
    ("gen-ppl:eos_rule=all:batch_size=4", {"name": "gen-ppl", "options": {"eos_rule": "all", "batch_size": 4}}),
    ({"name": "bleu", "lowercase": True}, {"name": "bleu", "options": {"lowercase": True}}),
    ({"name": "bleu", "options": {"lowercase": True}}, {"name": "bleu", "options": {"lowercase": True}}),
])
def test_metric_entries_read_every_form(raw, expected):
    assert MetricEntry.model_validate(raw).model_dump() == expected


def test_cli_and_yaml_forms_give_the_same_run_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("models: [ar]\nmetrics: [unigram-entropy, {name: bleu, lowercase: true}]\n")
    from_file = build_run_config(file=path)
    from_flags = build_run_config(overrides={"models": ["ar"], "metrics": ["unigram-entropy", "bleu:lowercase=true"]})
    assert from_file.metrics == from_flags.metrics


def test_a_wrong_metric_option_names_the_metric_field_and_value(toy_registry):
    from dlmbench.build import build_metric
    from dlmbench.context import RunContext
    from dlmbench.plugins import load_registry

    registry = load_registry(autoload=False)
    with pytest.raises(ConfigError, match=r"(?s)metric 'unigram-entropy'.*ids = 'words'"):
        build_metric(MetricEntry.model_validate("unigram-entropy:ids=words"), registry, "oracle", RunContext())


def count_network_rows(monkeypatch):
    """Rows through every model network: the NFE the core would count."""
    import toyplugin

    rows = []
    forward = toyplugin.ToyNet.forward
    monkeypatch.setattr(toyplugin.ToyNet, "forward", lambda self, x: rows.append(x.shape[0]) or forward(self, x))
    return rows


def test_rerunning_with_one_more_metric_scores_stored_samples_with_zero_nfe(toy_config, toy_and_builtins, monkeypatch):
    cfg = toy_config(metrics=["starts-right"])
    first = {r.cell_id: r for r in run(cfg, toy_and_builtins)}
    rows = count_network_rows(monkeypatch)
    more = toy_config(metrics=["starts-right", {"name": "unigram-entropy", "ids": "model"}])
    again = {r.cell_id: r for r in run(more, toy_and_builtins)}
    assert sum(rows) == 0, "no forward pass: the stored samples were scored"
    assert again.keys() == first.keys()
    for cid, record in again.items():
        assert record.metrics["starts-right"] == first[cid].metrics["starts-right"]
        assert record.metrics["unigram-entropy"].config == {"ids": "model", "evaluator": "proxy",  # offline
                                                            "max_length": None}
        assert record.created == first[cid].created  # the same cell, scored once more
    model_cells = [r for r in again.values() if r.model == "toy"]
    assert all(r.metrics["unigram-entropy"].value > 0 for r in model_cells)


def test_dlmbench_eval_scores_stored_samples_with_zero_nfe_and_records_the_options(toy_config, toy_and_builtins,
                                                                                   monkeypatch):
    from dlmbench.context import RunContext
    from dlmbench.rescore import rescore

    cfg = toy_config(metrics=["starts-right"])
    first = {r.cell_id: r for r in run(cfg, toy_and_builtins)}
    rows = count_network_rows(monkeypatch)
    n, failed = rescore(cfg.out_dir, [MetricEntry.model_validate("unigram-entropy:ids=model")], toy_and_builtins,
                        RunContext(cache=cfg.cache, offline=True))
    assert n == len(first) and not failed and sum(rows) == 0
    from dlmbench.results import ResultStore

    for record in ResultStore(cfg.out_dir).records():
        assert set(record.metrics) == {"starts-right", "unigram-entropy"}
        assert record.metrics["unigram-entropy"].config["ids"] == "model"
    # the same scores a fresh run computes while sampling
    fresh = {r.cell_id: r for r in run(toy_config(metrics=["starts-right", "unigram-entropy:ids=model"],
                                                   out=str(cfg.out_dir) + "-fresh"), toy_and_builtins)}
    stored = {r.cell_id: r for r in ResultStore(cfg.out_dir).records()}
    assert {c: r.metrics["unigram-entropy"].value for c, r in fresh.items()} == \
        {c: r.metrics["unigram-entropy"].value for c, r in stored.items()}


def test_eval_over_a_damaged_samples_file_fails_that_cell_only(toy_config, toy_and_builtins):
    from dlmbench.context import RunContext
    from dlmbench.rescore import rescore
    from dlmbench.results import ResultStore

    cfg = toy_config(metrics=["starts-right"])
    run(cfg, toy_and_builtins)
    store = ResultStore(cfg.out_dir)
    victim = next(r for r in store.records() if r.model == "toy")
    store.samples_path(victim.cell_id).write_bytes(b'{"i": 0, "ids": [1, 2\n\xff\xfe')  # torn and not UTF-8
    before = {p.name: p.read_bytes() for p in (cfg.out_dir / "cells").glob("*.json")}
    n, failed = rescore(cfg.out_dir, [MetricEntry.model_validate("unigram-entropy:ids=model")], toy_and_builtins,
                        RunContext(cache=cfg.cache, offline=True))
    assert list(failed) == [victim.cell_id] and n == len(before) - 1
    after = {p.name: p.read_bytes() for p in (cfg.out_dir / "cells").glob("*.json")}
    assert after[f"{victim.cell_id}.json"] == before[f"{victim.cell_id}.json"]  # left exactly as it was
    assert all(after[k] != v for k, v in before.items() if k != f"{victim.cell_id}.json")  # the others scored


def test_a_rerun_with_a_new_metric_samples_again_only_the_cell_whose_samples_are_damaged(toy_config,
                                                                                        toy_and_builtins):
    from dlmbench.results import ResultStore

    cfg = toy_config(metrics=["starts-right"])
    first = {r.cell_id: r for r in run(cfg, toy_and_builtins)}
    store = ResultStore(cfg.out_dir)
    victim = next(c for c, r in first.items() if r.model == "toy")
    store.samples_path(victim).write_text("not json\n")
    again = {r.cell_id: r for r in run(toy_config(metrics=["starts-right", "unigram-entropy:ids=model"]),
                                       toy_and_builtins)}
    assert all(r.ok and "unigram-entropy" in r.metrics for r in again.values())
    assert len(store.read_samples(victim)) == cfg.budget.num_samples  # sampled again and stored whole
    assert all(again[c].created == r.created for c, r in first.items() if c != victim)  # not re-sampled
