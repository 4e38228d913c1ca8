"""The runner end to end on the toy plugin: records, resume, failure isolation, crashes."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dlmbench.errors import CheckpointError, UnknownNameError
from dlmbench.results import ResultStore
from dlmbench.runner import Runner

TESTS = Path(__file__).parent


def run(config, registry):
    return Runner(config, registry, echo=lambda *_: None, progress=False).run()


def test_run_writes_one_record_per_cell_with_measured_nfe(toy_config, toy_registry):
    cfg = toy_config()
    records = run(cfg, toy_registry)
    cells = [r for r in records if r.model == "toy"]
    assert sorted((r.steps, r.seed) for r in cells) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    for r in cells:
        assert r.status == "ok"
        assert r.nfe == r.steps == r.max_nfe
        assert r.train_tokens == 8 * 8 * 20
        assert 0.0 <= r.metrics["starts-right"].value <= 1.0
        assert r.versions["torch"] and r.budget.seq_len == 8
        samples = ResultStore(cfg.out_dir).read_samples(r.cell_id)
        assert len(samples) == cfg.budget.num_samples
    data = [r for r in records if r.model == "data"]
    assert len(data) == 1 and data[0].metrics["starts-right"].value == 1.0
    model_records = ResultStore(cfg.out_dir).model_records()
    assert len(model_records) == 1 and model_records[0].train_tokens == 8 * 8 * 20


def test_guidance_batched_into_one_call_counts_twice(toy_config, toy_registry):
    cfg = toy_config(models=[{"name": "toy", "sampler_options": {"cfg_passes": 2}}])
    cells = [r for r in run(cfg, toy_registry) if r.model == "toy"]
    assert all(r.nfe == 2 * r.steps for r in cells)


def test_rerun_resumes_without_training_or_resampling(toy_config, toy_registry):
    cfg = toy_config()
    first = {r.cell_id: r.created for r in run(cfg, toy_registry)}
    messages = []
    Runner(cfg, toy_registry, echo=messages.append, progress=False).run()
    again = {r.cell_id: r.created for r in ResultStore(cfg.out_dir).records()}
    assert again == first
    assert any("skipping" in m for m in messages)
    assert not any("training" in m for m in messages)


def test_new_seed_reuses_the_checkpoint_and_runs_only_new_cells(toy_config, toy_registry):
    run(toy_config(), toy_registry)
    messages = []
    cfg2 = toy_config(budget={"seeds": [0, 1, 2]})
    Runner(cfg2, toy_registry, echo=messages.append, progress=False).run()
    assert any("reusing checkpoint" in m for m in messages)


def test_a_run_reusing_a_cached_checkpoint_gets_its_model_record(toy_config, toy_registry, tmp_path):
    run(toy_config(), toy_registry)
    trained = ResultStore(toy_config().out_dir).model_records()
    cfg2 = toy_config(name="other", out=str(tmp_path / "other"), budget={"num_samples": 3})
    run(cfg2, toy_registry)
    (reused,) = ResultStore(cfg2.out_dir).model_records()
    assert reused.reused_checkpoint.endswith(".safetensors")
    assert reused.budget_hash == cfg2.budget_hash() != trained[0].budget_hash
    assert {k: getattr(reused, k) for k in ("train_tokens", "final_loss", "checkpoint_hash")} == \
        {k: getattr(trained[0], k) for k in ("train_tokens", "final_loss", "checkpoint_hash")}


def test_model_prepare_runs_before_the_optimiser_and_is_recorded_and_shown(toy_config, toy_registry):
    import torch

    from dlmbench.checkpoint import load_checkpoint
    from dlmbench.leaderboard import render_markdown
    from dlmbench.results import load_records
    from dlmbench.build import build_model, build_task

    cfg = toy_config(models=[{"name": "toy", "options": {"prepare_tokens": 1234, "ema_decay": 0.9}}])
    runner = Runner(cfg, toy_registry, echo=lambda *_: None, progress=False)
    runner.run()
    data = build_task(cfg, toy_registry, runner.ctx)
    (record,) = ResultStore(cfg.out_dir).model_records()
    assert record.prepared == {"what": "toy preparation", "tokens": 1234, "rows_seen": data.train.shape[0]}
    assert record.train_tokens == 8 * 8 * 20  # the budget stays the flow's own
    text = render_markdown(*load_records([cfg.out_dir]))
    assert "- toy/reveal (ema_decay=0.9, prepare_tokens=1234): toy preparation; 1,234 training tokens outside " \
           "the budget." in text
    # prepare zeroed and froze the position table before the optimiser and the EMA were
    # built: neither moved it back (an EMA made first would restore its initial values)
    (entry,) = cfg.models
    trained = build_model(entry, cfg.preset, toy_registry, data)
    slot = runner.checkpoint_slot(trained, data)
    load_checkpoint(trained, slot.path, slot.key)
    assert not trained.net.pos.any()
    assert trained.net.out.weight.abs().sum() > 0


def test_a_failing_plugin_fails_only_its_own_cells(toy_config, toy_registry):
    cfg = toy_config(models=[
        "toy",
        {"name": "toy", "label": "broken-sampler", "options": {"fail_in": "sample"}},
        {"name": "toy", "label": "broken-training", "options": {"fail_in": "loss"}},
        {"name": "toy", "label": "broken-build", "options": {"fail_in": "build"}},
    ])
    records = run(cfg, toy_registry)
    by_label = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    assert all(r.status == "ok" for r in by_label["toy/reveal"])
    for label, msg in (("broken-sampler", "in sample"), ("broken-training", "in loss"), ("broken-build", "in build")):
        assert len(by_label[label]) == 4
        assert all(r.status == "error" and msg in r.error for r in by_label[label])


def test_failed_cells_are_retried_on_rerun(toy_config, toy_registry, monkeypatch):
    """A cell that failed (a plugin bug, since fixed) runs again on the next run, under
    its own id; the cells that finished are neither sampled nor written again. Catches a
    runner that treats an error record as finished, or that redoes finished cells."""
    import toyplugin

    sample, broken, sampled = toyplugin.Reveal.sample, [True], []

    def flaky(self, model, request):  # the bug: the 4-step cells raise
        sampled.append(request.steps)
        if broken[0] and request.steps == 4:
            raise RuntimeError("toy: failing at 4 steps")
        return sample(self, model, request)

    monkeypatch.setattr(toyplugin.Reveal, "sample", flaky)
    cfg = toy_config()
    first = {r.cell_id: r for r in run(cfg, toy_registry) if r.model == "toy"}
    assert sorted((r.steps, r.status) for r in first.values()) == [(2, "ok"), (2, "ok"), (4, "error"), (4, "error")]
    failed = {c for c, r in first.items() if not r.ok}
    store = ResultStore(cfg.out_dir)
    files = sorted((cfg.out_dir / "cells").glob("*.json"))
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    broken[0], sampled[:] = False, []
    messages = []
    again = [r for r in Runner(cfg, toy_registry, echo=messages.append, progress=False).run() if r.model == "toy"]
    assert set(sampled) == {4}  # only the failed cells were sampled again
    assert sorted(r.cell_id for r in again) == sorted(first)  # every cell once, under the same id
    assert all(r.ok for r in again) and all(store.is_done(c) for c in failed)
    assert all(len(store.read_samples(c)) == cfg.budget.num_samples for c in failed)
    assert sorted((cfg.out_dir / "cells").glob("*.json")) == files  # no second record of any cell
    for path in files:  # the finished cells' records (and the data row) were left untouched
        if path.stem not in failed:
            assert path.stat().st_mtime_ns == stamps[path.name], path.name
    assert any("reusing checkpoint" in m for m in messages) and not any("trained in" in m for m in messages)
    assert not any("cannot be read" in m for m in messages)  # retried as failed, not as damaged samples


def test_unknown_model_has_a_did_you_mean(toy_registry):
    with pytest.raises(UnknownNameError, match="Did you mean 'toy'"):
        toy_registry.model("tyo")


def test_corrupted_cached_checkpoint_fails_that_model_with_a_clear_error(toy_config, toy_registry):
    cfg = toy_config()
    run(cfg, toy_registry)
    ckpt = next(Path(cfg.cache).glob("checkpoints/*.safetensors"))
    ckpt.write_bytes(b"not a safetensors file")
    cfg2 = toy_config(budget={"seeds": [5]})
    records = run(cfg2, toy_registry)
    errors = [r for r in records if r.status == "error"]
    assert errors and all("corrupted" in r.error for r in errors)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path, toy_registry):
    from dlmbench.checkpoint import read_metadata

    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "nope.safetensors")


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import toyplugin
    from dlmbench.config import build_run_config
    from dlmbench.plugins import build_registry, get_plugin_manager
    from dlmbench.runner import Runner
    cfg = build_run_config(overrides={{
        "name": "crash", "task": "toy-count", "out": {out!r}, "cache": {cache!r},
        "models": [{{"name": "toy", "sampler_options": {{"delay": 0.05}}}}],
        "budget": {{"seq_len": 8, "steps": [1, 2, 3, 4, 5, 6], "num_samples": 4, "batch_size": 8,
                    "train_tokens": 8 * 8 * 5, "seeds": [0, 1], "sample_batch_size": 4}},
    }})
    registry = build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))
    Runner(cfg, registry, echo=print, progress=False).run()
    """
)


def test_kill_minus_nine_mid_run_loses_and_duplicates_nothing(tmp_path, one_thread):
    out, cache = tmp_path / "run", tmp_path / "cache"
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(out), cache=str(cache)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cells = out / "cells"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some (not all) model cells are finished
        done = [p for p in cells.glob("toy-*.json")] if cells.exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: json.loads(p.read_text())["created"] for p in cells.glob("*.json")}
    assert 3 <= len([n for n in before if n.startswith("toy-")]) < 12, "the kill must land mid-run"
    runpy.run_path(str(script), run_name="__main__")  # the rerun: in this process, the kill needed its own
    after = {p.name: json.loads(p.read_text()) for p in cells.glob("*.json")}
    model_cells = [r for n, r in after.items() if n.startswith("toy-")]
    assert len(model_cells) == 12  # 6 steps x 2 seeds, each exactly once
    assert sorted((r["steps"], r["seed"]) for r in model_cells) == sorted((s, d) for s in range(1, 7) for d in (0, 1))
    assert all(r["status"] == "ok" for r in model_cells)
    for name, created in before.items():  # finished cells were kept, not recomputed
        assert after[name]["created"] == created


def test_trained_weights_do_not_depend_on_what_ran_before(toy_config, toy_registry, tmp_path):
    """A resumed run skips work (and the random draws it made): the model it trains next
    must still start from the same seeded initial weights."""
    import torch
    from safetensors.torch import load_file

    weights = []
    for i, burn in enumerate((0, 1000)):
        torch.rand(burn)  # history: other models, cached cells, ...
        cfg = toy_config(out=str(tmp_path / f"run{i}"), cache=str(tmp_path / f"cache{i}"))
        run(cfg, toy_registry)
        (path,) = (tmp_path / f"cache{i}" / "checkpoints").glob("*.safetensors")
        weights.append(load_file(path))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
