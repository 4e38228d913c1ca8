"""Worker processes (``dlmbench run --jobs N``): the records of a one-process run, every
cell once, a crash confined to its own model, and one clear line for a bad ``--jobs``."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from dlmbench.context import RunContext
from dlmbench.distributed import World
from dlmbench.errors import ConfigError
from dlmbench.results import ResultStore
from dlmbench.runner import Runner
from dlmbench.workers import Slot, Workers, plan_workers

#: What a record may differ in between processes: how long things took, and when (a
#: checkpoint file stores its training time, so its checksum differs too: its weights are compared).
TIMINGS = {"wall_time_s", "score_time_s", "created", "train_seconds", "first_step_seconds", "median_step_seconds",
           "compile_seconds", "checkpoint_sha256"}

# Two models share one checkpoint per training seed (only the sampler differs), so they are
# one unit: 2 checkpoints x 2 training seeds = 4 units for 2 workers.
MODELS = ["toy", {"name": "toy", "options": {"hidden": 8}}, {"name": "toy", "sampler_options": {"cfg_passes": 2}}]


def two_cpu_workers(start_method=None) -> Workers:
    return Workers((Slot("cpu", 1), Slot("cpu", 1)), "test", start_method)


def stored(out: Path) -> tuple[dict, dict, dict]:
    """Cells, their samples and model records of a run directory, timings left out."""
    store = ResultStore(out)
    cells = {r.cell_id: {k: v for k, v in r.model_dump(mode="json").items() if k not in TIMINGS}
             for r in store.records()}
    samples = {cid: store.read_samples(cid) for cid in cells if store.samples_path(cid).exists()}
    models = {(m.model, m.checkpoint_hash): {k: v for k, v in m.model_dump(mode="json").items() if k not in TIMINGS}
              for m in store.model_records()}
    return cells, samples, models


def run_both(toy_config, toy_registry, tmp_path, start_method=None, models=MODELS, **budget):
    """The same config run in one process and on two workers (own results and caches)."""
    out = {}
    for name, workers in (("one", None), ("two", two_cpu_workers(start_method))):
        cfg = toy_config(models=models, out=str(tmp_path / name), cache=str(tmp_path / f"cache-{name}"),
                         budget={"train_seeds": [0, 1], "seeds": [0], "train_tokens": 8 * 8 * 10, **budget})
        seen: list[str] = []
        records = Runner(cfg, toy_registry, RunContext(cache=cfg.cache, threads=1), echo=lambda *_: None,
                         progress=False, on_cell=lambda r: seen.append(r.cell_id), workers=workers).run()
        weights = {p.name: load_file(p) for p in (tmp_path / f"cache-{name}").rglob("*.safetensors")}
        out[name] = SimpleNamespace(records=records, seen=seen, stored=stored(cfg.out_dir), weights=weights)
    return out["one"], out["two"]


def test_two_workers_write_exactly_the_records_of_one_process(toy_config, toy_registry, tmp_path):
    """Catches a worker that trains or samples with another seed or thread count, a unit
    lost or run twice, records returned out of the one-process order, and an on_cell that
    is never told (a lambda does not pickle: the main process calls it)."""
    one, two = run_both(toy_config, toy_registry, tmp_path)
    assert [(r.cell_id, r.status) for r in two.records] == [(r.cell_id, r.status) for r in one.records]
    assert len(one.records) == 1 + 3 * 2 * 2 and all(r.ok for r in one.records)  # data + entries x seeds x steps
    assert len({r.cell_id for r in one.records}) == len(one.records)
    assert two.stored == one.stored  # every field but timings, the samples, the model records
    assert two.weights.keys() == one.weights.keys() and len(one.weights) == 4
    assert all(torch.equal(t, two.weights[name][k]) for name, w in one.weights.items() for k, t in w.items())
    assert sorted(two.seen) == sorted(one.seen) and len(two.seen) == len(one.seen)


@pytest.mark.slow  # a spawned worker imports torch afresh: about 6 s on 2 cores before any work
def test_spawned_workers_rebuild_the_registry_and_match_too(toy_config, toy_registry, tmp_path):
    """The start method of --devices: catches state a spawned worker cannot rebuild from
    what it is sent (the registry's plugin classes are imported again)."""
    one, two = run_both(toy_config, toy_registry, tmp_path, "spawn", models=["toy"], steps=[2])
    assert [r.cell_id for r in two.records] == [r.cell_id for r in one.records] and len(one.records) == 3
    assert two.stored == one.stored


def test_a_unit_whose_worker_dies_or_raises_fails_only_its_own_cells(toy_config, toy_registry, tmp_path, monkeypatch):
    """Catches a pool that breaks for everyone when one worker dies (``os._exit``, as a
    segfault or the OOM killer would), and an exception that escapes a unit."""
    run_trained = Runner.run_trained

    def sabotaged(self, entry, *args):  # a forked worker inherits this patch
        if entry.label == "dies":
            os._exit(3)
        if entry.label == "raises":
            raise RuntimeError("escaped the unit")
        return run_trained(self, entry, *args)

    monkeypatch.setattr(Runner, "run_trained", sabotaged)
    cfg = toy_config(models=["toy", {"name": "toy", "label": "dies", "options": {"hidden": 8}},
                             {"name": "toy", "label": "raises", "options": {"hidden": 12}}])
    records = Runner(cfg, toy_registry, RunContext(cache=cfg.cache, threads=1), echo=lambda *_: None,
                     progress=False, workers=two_cpu_workers()).run()
    by_label: dict[str, list] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    assert [r.status for r in by_label.get("toy/reveal", [])] == ["ok"] * 4
    assert len(by_label["dies"]) == 4 and all(r.status == "error" and "died" in r.error for r in by_label["dies"])
    assert len(by_label["raises"]) == 4 and all("escaped the unit" in r.error for r in by_label["raises"])
    stored_ids = {p.stem for p in (cfg.out_dir / "cells").glob("*.json")}
    assert stored_ids == {r.cell_id for r in records}


def test_auto_picks_cores_over_threads_on_cpu_and_one_worker_per_gpu(toy_config, toy_registry, monkeypatch):
    """Catches an auto choice that oversubscribes the cores, exceeds the units, or puts two
    workers on one GPU unasked; and a torchrun world combined with workers."""
    import dlmbench.workers as workers

    monkeypatch.setattr(workers, "cores", lambda: 2)
    cfg = toy_config(models=MODELS)  # 2 units
    cpu = RunContext(device=torch.device("cpu"))
    assert plan_workers("auto", None, cfg, toy_registry, cpu).slots == (Slot("cpu", 1),) * 2
    assert plan_workers("auto", None, cfg.model_copy(update={"threads": 2}), toy_registry, cpu).jobs == 1
    assert plan_workers(8, None, cfg, toy_registry, cpu).jobs == 2  # never more workers than units
    assert plan_workers("auto", None, toy_config(), toy_registry, cpu).jobs == 1
    assert plan_workers("auto", None, cfg, toy_registry, RunContext(device=torch.device("cuda"))).jobs == 1
    with pytest.raises(ConfigError, match=r"^--jobs 2 under torchrun \(world size 2\): .*drop --jobs"):
        plan_workers("2", None, cfg, toy_registry, RunContext(world=World(0, 2)))
    assert plan_workers("auto", None, cfg, toy_registry, RunContext(world=World(0, 2))).jobs == 1


def test_the_cheapest_unit_is_dispatched_first(toy_config, toy_registry):
    """Compute (parameters x tokens trained and sampled): the hidden-8 toy goes before the
    hidden-16 one."""
    from dlmbench.build import TaskViews

    cfg = toy_config(models=[{"name": "toy", "options": {"hidden": 16}}, {"name": "toy", "options": {"hidden": 8}}])
    runner = Runner(cfg, toy_registry, RunContext(cache=cfg.cache), echo=lambda *_: None)
    views = TaskViews(cfg, toy_registry, runner.ctx)
    units = two_cpu_workers().units(runner, views, runner.validate_entries(views))
    assert [u.members for u in units] == [(1,), (0,)] and units[0].cost < units[1].cost


def test_after_one_cheap_unit_per_worker_the_longest_go_first():
    """Costs 5, 1, 3, 9, 2 on 2 workers: 1 and 2 first (the first rows early), then 9, 5, 3
    (a long unit started last would leave one worker running it alone)."""
    from dlmbench.workers import Unit, dispatch_order

    units = [Unit((i,), None, c, str(i)) for i, c in enumerate([5.0, 1.0, 3.0, 9.0, 2.0])]
    assert [u.cost for u in dispatch_order(units, 2)] == [1.0, 2.0, 9.0, 5.0, 3.0]
    assert [u.cost for u in dispatch_order(units, 1)] == [1.0, 9.0, 5.0, 3.0, 2.0]


@pytest.mark.parametrize("flags, words", [
    (["--jobs", "0"], "--jobs '0': expected a whole number >= 1 or auto, e.g. --jobs 2"),
    (["--jobs", "two"], "--jobs 'two': expected a whole number >= 1 or auto"),
    (["--jobs", "-1"], "--jobs '-1': expected"),
    (["--devices", "gpu0"], "--devices 'gpu0': list CUDA devices as cuda:N"),
])
def test_a_bad_jobs_or_devices_value_is_one_line_and_exit_2(flags, words, capsys, tmp_path, monkeypatch):
    """Catches a traceback, a silent fallback to one worker, or a message without the fix."""
    from dlmbench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLMBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    with pytest.raises(SystemExit) as exit_:  # checked first: the unknown model is never reached
        main(["run", "--models", "no-such-model", *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_the_command_line_runs_workers_and_keeps_the_board_current(toy_registry, capsys, tmp_path, monkeypatch):
    """``dlmbench run --jobs 2``: the choice is printed once, and leaderboard.md is written
    from the workers (its writer pickles) and at the end."""
    import dlmbench.cli as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLMBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setattr(cli, "_registry", lambda: toy_registry)
    cli.main(["run", "--task", "toy-count", "--models", "toy", "--train-seeds", "0,1", "--seeds", "0",
              "--seq-len", "8", "--num-samples", "4", "--batch-size", "8", "--train-tokens", "320", "--steps", "2,4",
              "--out", "run", "--cache", "cache", "--no-progress", "--jobs", "2"])
    out = capsys.readouterr().out
    assert out.count("running 2 models on 2 workers, 1 thread each (--jobs 2); in this order: toy/reveal, training "
                     "seed 0, toy/reveal, training seed 1") == 1
    assert "[toy/reveal, training seed 1] done: 2 cells" in out
    assert pickle.loads(pickle.dumps(cli.BoardWriter(tmp_path / "b.md", "c", "h"))).board == tmp_path / "b.md"
    board = (tmp_path / "run" / "leaderboard.md").read_text()
    assert "toy/reveal" in board
    cells = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("toy-*.json")]
    assert sorted((c["train_seed"], c["steps"]) for c in cells) == [(0, 2), (0, 4), (1, 2), (1, 4)]


KILLED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import toyplugin
    from dlmbench.config import build_run_config
    from dlmbench.context import RunContext
    from dlmbench.plugins import build_registry, get_plugin_manager
    from dlmbench.runner import Runner
    from dlmbench.workers import Slot, Workers
    cfg = build_run_config(overrides={{
        "name": "killed", "task": "toy-count", "out": {out!r}, "cache": {cache!r},
        "models": [{{"name": "toy", "sampler_options": {{"delay": 0.2}}}},
                   {{"name": "toy", "options": {{"hidden": 8}}, "sampler_options": {{"delay": 0.2}}}}],
        "budget": {{"seq_len": 8, "steps": [4, 8, 16], "num_samples": 4, "batch_size": 8,
                    "train_tokens": 8 * 8 * 5, "seeds": [0], "sample_batch_size": 4}},
    }})
    registry = build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))
    Runner(cfg, registry, RunContext(cache=cfg.cache, threads=1), echo=print, progress=False,
           workers=Workers((Slot("cpu", 1), Slot("cpu", 1)), "test")).run()
    """
)


@pytest.mark.slow  # a fresh interpreter imports torch: a few seconds
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_die_with_a_killed_main_process(tmp_path):
    """Catches workers left waiting forever on their task queue after ``kill -9`` of the run."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"),
                                    cache=str(tmp_path / "cache")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "run" / "cells").glob("toy-*.json")):
        time.sleep(0.05)
    children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    alive = children
    for _ in range(100):
        alive = [c for c in children if Path(f"/proc/{c}").exists() and "Z" not in _state(c)]
        if not alive:
            break
        time.sleep(0.05)
    for pid in alive:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert len(children) == 2 and not alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
