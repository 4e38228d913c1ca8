"""Smoke tests of the benchmark scripts: each runs with ``--quick`` on ``ar`` and writes
JSON with the expected keys. Timings are not checked (they are the scripts' output)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
MACHINE_KEYS = {"device", "cpu_model", "torch_threads", "cpu_cores_available", "versions"}


pytestmark = pytest.mark.usefixtures("one_thread")  # the scripts set 1 thread; it restores the count after


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, tmp_path: Path, module=None) -> dict:
    """Run the script's ``main`` in this process (saves a torch import per script);
    ``module``: the script already loaded (and patched) by the caller."""
    out = tmp_path / f"{name}.json"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        (module or load(name)).main(["--quick", "--json", str(out), *args])
    finally:
        os.chdir(old)
    data = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert {"date", "machine", "settings", "command"} <= set(data)
    assert MACHINE_KEYS <= set(data["machine"])
    return data


def test_harness_overhead(tmp_path):
    data = run_script("harness_overhead", "--models", "ar,no-such-model", tmp_path=tmp_path)
    assert "no-such-model" in data["skipped"]
    (r,) = data["results"]
    assert r["model"] == "ar"
    for phase in ("train", "sample"):
        assert {"harness_s", "bare_s", "overhead_pct", "paired_overhead_pct", "noise_floor_pct", "times_s"} <= set(r[phase])
    assert r["train"]["check"]["same_losses"] and r["train"]["check"]["max_abs_weight_diff"] == 0
    assert r["sample"]["same_ids"]


def test_load_average_at_start_is_read_when_the_script_starts(monkeypatch):
    """Read when the JSON is written, the load average counts the script's own work: an
    idle machine would read as busy."""
    loads = iter([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
    monkeypatch.setattr(os, "getloadavg", lambda: next(loads))
    import torch

    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_common", common)  # its dataclasses look themselves up there
    spec.loader.exec_module(common)  # the script's start

    machine = common.machine(torch.device("cpu"))  # its end
    assert (machine["load_average_at_start"], machine["load_average_at_end"]) == ([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])


def test_utilization(tmp_path):
    data = run_script("utilization", "--models", "ar", tmp_path=tmp_path)
    assert data["peak"]["flop_per_s"] > 0
    (r,) = data["results"]
    assert r["seq_len"] == 16 and r["forward_flops"] > 0 and r["sample_flops"] > 0
    assert {"forward_fraction_of_peak", "sample_fraction_of_peak", "flops_by_op"} <= set(r)


def test_utilization_before_a_revision_measures_its_code_first_and_compares(tmp_path):
    import subprocess

    def worktrees():
        return subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True,
                              check=True).stdout.count("\n")

    count = worktrees()
    data = run_script("utilization", "--models", "ar", "--before", "HEAD", tmp_path=tmp_path)
    before = data["before_revision"]
    assert before["revision"] == "HEAD" and before["settings"]["quick"] and before["settings"]["models"] == "ar"
    (b,), (a,), (row,) = before["results"], data["results"], data["comparison"]
    assert row["model"] == a["label"] == b["label"] and row["L"] == 16
    assert row["sample after/before"] == a["sample"]["median_s"] / b["sample"]["median_s"]
    assert row["fwd after/before"] == a["forward"]["median_s"] / b["forward"]["median_s"]
    assert worktrees() == count  # its temporary worktree is gone


def test_quality_per_compute_runs_the_cli(tmp_path):
    data = run_script("quality_per_compute", "--run", "--models", "ar", "--out", str(tmp_path / "run"),
                      "--cache", str(tmp_path / "cache"), tmp_path=tmp_path)
    assert data["ran_models"] == ["ar"] and data["metric"] == "grammar-accept"
    (s,) = data["summary"]
    assert s["label"] == "ar/ancestral" and s["kv_cache"]
    assert {"reached", "best", "at"} <= set(s)
    assert {p["steps"] for p in data["curves"]["ar/ancestral"]} == {2, 4}
    assert data["reference"] is not None  # the held-out data row


def check_scaling(data: dict) -> None:
    ok = [r for r in data["results"] if "error" not in r]
    assert len(ok) == 4  # 2 lengths x (forward, train)
    assert all({"median_s", "peak_delta_bytes", "params"} <= set(r) for r in ok)
    assert {(s["phase"], s["size"]) for s in data["slopes"]} == {("forward", "tiny"), ("train", "tiny")}
    assert all(s["time_slope"] is not None for s in data["slopes"])


def test_scaling(tmp_path):
    """The first configuration spawns its own worker process, as every one does in a real
    run; the other three run the same worker in this process (each worker process spends
    seconds importing torch, a training one as long again importing torch's compiler for
    the optimiser). ``test_scaling_every_configuration_in_its_own_process`` (slow) spawns all four."""
    module = load("scaling")
    real_spawn, spawned = module.spawn, []

    def spawn(spec: dict, timeout: float) -> dict:
        if not spawned:
            spawned.append(spec)
            return real_spawn(spec, timeout)
        return module.worker(spec)

    module.spawn = spawn
    data = run_script("scaling", "--models", "ar", tmp_path=tmp_path, module=module)
    check_scaling(data)
    (first,) = spawned
    through = [r for r in data["results"] if "process_s" in r]  # only spawn's records time the process
    assert [(r["phase"], r["seq_len"]) for r in through] == [(first["phase"], first["seq_len"])]


@pytest.mark.slow
def test_scaling_every_configuration_in_its_own_process(tmp_path):
    check_scaling(run_script("scaling", "--models", "ar", tmp_path=tmp_path))


_BASE = {"run": "r", "task": "grammar", "task_fingerprint": "f", "budget_hash": "b", "device": "cpu", "versions": {},
         "sampler": "s", "budget": {"seq_len": 8, "steps": [4], "num_samples": 10, "batch_size": 1,
                                    "train_tokens": 8, "seeds": [0]}}


def _cell(label, model, steps, seed, nfe, wall, value):
    return {**_BASE, "cell_id": f"{label}-{steps}-{seed}".replace("/", "_"), "status": "ok", "label": label,
            "model": model, "steps": steps, "seed": seed, "nfe": nfe, "wall_time_s": wall, "num_samples": 10,
            "metrics": {"grammar-accept": {"value": value, "higher_is_better": True}}}


def test_quality_per_compute_reads_cells(tmp_path):
    cells = tmp_path / "run" / "cells"
    cells.mkdir(parents=True)
    records = [
        _cell("ar/ancestral", "ar", 8, 0, 32, 1.0, 0.6), _cell("ar/ancestral", "ar", 8, 1, 32, 1.0, 0.8),
        _cell("m/s", "m", 4, 0, 5, 0.5, 0.2), _cell("m/s", "m", 16, 0, 17, 2.0, 0.75),
        _cell("m/s", "m", 64, 0, 65, 8.0, 0.9), _cell("n/s", "n", 4, 0, 5, 0.5, 0.1),
        {**_BASE, "cell_id": "e", "status": "error", "label": "n/s", "model": "n", "steps": 16, "seed": 0,
         "error": "boom"},
    ]
    for i, r in enumerate(records):
        (cells / f"{i}.json").write_text(json.dumps(r))
    data = run_script("quality_per_compute", str(tmp_path / "run"), "--models", "ar,m,n", tmp_path=tmp_path)
    assert data["target"] == pytest.approx(0.7) and data["target_source"].startswith("ar")
    by = {s["label"]: s for s in data["summary"]}
    assert by["m/s"]["reached"] and by["m/s"]["at"]["nfe"] == 17 and by["m/s"]["at"]["wall_time_s"] == 2.0
    assert not by["n/s"]["reached"] and by["n/s"]["best"]["value"] == 0.1
    assert by["ar/ancestral"]["at"]["value"] == pytest.approx(0.7)
    assert data["failed_cells"] == [{"label": "n/s", "steps": 16, "error": "boom"}]
