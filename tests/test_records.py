"""Typed records: validated both ways, strict JSON, the README schema, schema-1 results."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from dlmbench.records import SCHEMA_VERSION, CellIdentity, CellRecord, MetricResult, schema_markdown
from dlmbench.results import RecordWarning, ResultStore, load_records
from dlmbench.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def run(cfg, registry):
    return Runner(cfg, registry, echo=lambda *_: None, progress=False).run()


def test_an_undefined_metric_is_stored_as_null_with_its_reason_never_as_NaN(toy_config, toy_registry):
    records = run(toy_config(), toy_registry)
    record = next(r for r in records if r.model == "toy")
    bad = record.model_copy(update={"metrics": {"m": MetricResult.model_validate(
        {"value": float("nan"), "stderr": float("inf"), "higher_is_better": True, "details": {"n": 0}})}})
    text = bad.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-RFC-8259 constant {c} in stored JSON"))
    stored = json.loads(text)["metrics"]["m"]
    assert stored["value"] is None and stored["stderr"] is None
    assert stored["undefined"] == "nothing to average (n=0)"
    assert CellRecord.model_validate_json(text).metrics["m"].undefined == "nothing to average (n=0)"


def test_records_are_validated_when_read_and_a_bad_one_is_left_out_with_a_warning(toy_config, toy_registry):
    cfg = toy_config()
    run(cfg, toy_registry)
    store = ResultStore(cfg.out_dir)
    victim = next(p for p in (cfg.out_dir / "cells").glob("toy-*.json"))
    data = json.loads(victim.read_text())
    data["steps"] = "many"  # the wrong type
    victim.write_text(json.dumps(data))
    with pytest.warns(RecordWarning, match=re.escape(victim.name)):
        records = store.records()
    assert victim.stem not in {r.cell_id for r in records} and len(records) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)
        assert not store.is_done(victim.stem)  # so a re-run recomputes it
        rerun = run(cfg, toy_registry)
    assert victim.stem in {r.cell_id for r in rerun if r.ok}


def test_a_record_with_an_unknown_field_is_refused_when_written():
    with pytest.raises(ValueError, match="extra"):
        MetricResult.model_validate({"value": 1.0, "higher_is_better": True, "colour": "red"})


def test_the_readme_results_schema_is_the_one_the_records_define():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Results schema\n")
    section = readme[start: readme.index("\n## ", start + 1) + 1]
    assert schema_markdown() in section, "regenerate with dlmbench.records.schema_markdown()"
    for name, field in CellRecord.model_fields.items():
        assert f"- `{field.alias or name}`" in section


def test_cell_ids_do_not_depend_on_metric_names(toy_config, toy_and_builtins):
    a = {r.cell_id for r in run(toy_config(), toy_and_builtins)}
    b = {r.cell_id for r in run(toy_config(metrics=["starts-right", "unigram-entropy"]), toy_and_builtins)}
    assert a == b


def _as_schema_1(path: Path, old_id: str) -> None:
    data = json.loads(path.read_text())
    data.update(schema=1, cell_id=old_id)
    path.unlink()
    path.with_name(f"{old_id}.json").write_text(json.dumps(data))


def test_results_written_before_schema_2_are_migrated_and_resume_without_resampling(toy_config, toy_registry,
                                                                                       monkeypatch):
    import toyplugin

    cfg = toy_config()
    first = {r.cell_id: r for r in run(cfg, toy_registry)}
    cells, samples = cfg.out_dir / "cells", cfg.out_dir / "samples"
    for cid in first:  # rename every cell to a schema-1 id, as the old code named them
        old = f"{cid}-old"
        _as_schema_1(cells / f"{cid}.json", old)
        if (samples / f"{cid}.jsonl").exists():
            (samples / f"{cid}.jsonl").rename(samples / f"{old}.jsonl")
    calls = []
    monkeypatch.setattr(toyplugin.Reveal, "sample", lambda *a, **k: calls.append(1) or pytest.fail("re-sampled"))
    again = {r.cell_id: r for r in run(cfg, toy_registry)}
    assert not calls
    assert again.keys() == first.keys()
    assert {c: r.created for c, r in again.items()} == {c: r.created for c, r in first.items()}
    assert all(r.schema_version == SCHEMA_VERSION for r in again.values())
    assert sorted(p.stem for p in cells.glob("*.json")) == sorted(first)
    assert not list(samples.glob("*-old.jsonl"))


def test_the_leaderboard_reads_a_schema_1_record_unchanged(toy_config, toy_registry, tmp_path):
    from dlmbench.leaderboard import render_markdown

    cfg = toy_config()
    run(cfg, toy_registry)
    before = render_markdown(*load_records([cfg.out_dir]))
    for path in (cfg.out_dir / "cells").glob("*.json"):
        _as_schema_1(path, path.stem + "-old")
    assert render_markdown(*load_records([cfg.out_dir])) == before


def test_identity_hash_is_stable():
    """Cell ids name finished results on disk: a change here orphans every stored run."""
    identity = CellIdentity(run="default", model="mdlm", model_hash="0123456789abcdef", sampler="ddpm_cache",
                            sampler_settings={"eps": 1e-05}, steps=32, task="grammar", seed=0,
                            budget_hash="abcdefabcdef")
    assert identity.cell_id == "mdlm-ddpm_cache-steps32-seed0-" + identity.cell_id.rsplit("-", 1)[1]
    assert len(identity.cell_id.rsplit("-", 1)[1]) == 10
