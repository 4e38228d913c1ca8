"""Failures stay local: a raising metric, a sampler's bad ids, leftovers of a killed run."""

from __future__ import annotations

import os
import subprocess
import sys

import dlmbench
from dlmbench.runner import Runner


class Raising(dlmbench.Metric):
    name = "raises"
    description = "fails on purpose"

    def compute(self, generation, task):
        raise ZeroDivisionError("on purpose")


class RaisingPlugin:
    @staticmethod
    @dlmbench.hookimpl
    def register_metrics(register):
        register(Raising)


def registry_with_raising_metric():
    import toyplugin

    from dlmbench.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin, RaisingPlugin]))


def test_a_raising_metric_fails_its_cells_and_the_run_goes_on(toy_config):
    """Once, the held-out row was scored outside any guard and one raising metric ended
    the run with a traceback."""
    records = Runner(toy_config(metrics=["starts-right", "raises"]), registry_with_raising_metric(),
                     echo=lambda *_: None, progress=False).run()
    assert len(records) == 5  # the data row and 2 steps x 2 seeds: every cell was attempted
    assert all(r.status == "error" and "metric 'raises' failed: ZeroDivisionError: on purpose" in r.error
               for r in records)
    fine = Runner(toy_config(metrics=["starts-right"]), registry_with_raising_metric(), echo=lambda *_: None,
                  progress=False).run()
    assert all(r.ok for r in fine)  # the same cells, retried without the broken metric


def test_a_sampler_returning_ids_outside_the_vocabulary_fails_its_cell_naming_them(toy_config, toy_registry):
    records = Runner(toy_config(models=[{"name": "toy", "options": {"fail_in": "ids"}}]), toy_registry,
                     echo=lambda *_: None, progress=False).run()
    cells = [r for r in records if r.model == "toy"]
    assert cells and all(r.status == "error" for r in cells)
    # the toy task's vocabulary: 12 words and 5 specials; the broken sampler writes 17 + 3
    assert "sampler 'reveal' of model 'toy' returned ids outside the vocabulary [0, 17): [20]" in cells[0].error


def test_temp_files_left_by_a_killed_writer_are_removed_and_live_ones_kept(toy_config, toy_registry):
    cfg = toy_config()
    cells = cfg.out_dir / "cells"
    cells.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has exited, as a killed run's has
    stale = cells / f".x.json.{dead_pid}.abc123.tmp"
    live = cells / f".y.json.{os.getppid()}.def456.tmp"  # our parent is running
    checkpoints = cfg.out_dir.parent / "cache" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale_ckpt = checkpoints / f".toy-0.safetensors.{dead_pid}.q1.tmp"
    for p in (stale, live, stale_ckpt):
        p.write_text("torn")
    messages = []
    Runner(cfg, toy_registry, echo=messages.append, progress=False).run()
    assert not stale.exists() and not stale_ckpt.exists() and live.exists()
    assert "removed 2 temp file(s) left by a killed run" in messages


def test_a_raising_metric_added_to_a_finished_run_keeps_its_cells_and_scores(toy_config):
    registry = registry_with_raising_metric()
    first = {r.cell_id: r for r in Runner(toy_config(metrics=["starts-right"]), registry,
                                          echo=lambda *_: None, progress=False).run()}
    messages = []
    again = {r.cell_id: r for r in Runner(toy_config(metrics=["starts-right", "raises"]), registry,
                                          echo=messages.append, progress=False).run()}
    assert again == first  # nothing lost, nothing re-sampled
    assert sum("metric 'raises' failed" in m and "keeps its earlier scores" in m for m in messages) == len(first)
