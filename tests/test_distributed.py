"""torchrun with 2 CPU processes (gloo): DDP training and sharded sampling."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import toyplugin
    from dlmbench.config import build_run_config
    from dlmbench.plugins import build_registry, get_plugin_manager
    from dlmbench.runner import Runner
    cfg = build_run_config(overrides={{
        "name": "ddp", "task": "toy-count", "out": sys.argv[1], "cache": sys.argv[2], "models": ["toy"],
        "budget": {{"seq_len": 8, "steps": [2, 3], "num_samples": 10, "batch_size": 8,
                    "train_tokens": 8 * 8 * 10, "seeds": [0, 1], "sample_batch_size": 3}},
    }})
    registry = build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))
    Runner(cfg, registry, echo=print, progress=False).run()
    """
)


def launch(script: Path, out: Path, cache: Path, procs: int) -> None:
    """Run ``script`` under torchrun with ``procs`` processes, or (``procs == 1``) in this
    process as a plain script: one world of one, as ``python run.py`` is, without starting
    an interpreter and importing torch once more (the caller holds one torch thread, as
    ``OMP_NUM_THREADS=1`` gives the torchrun workers)."""
    if procs == 1:
        argv = sys.argv
        sys.argv = [str(script), str(out), str(cache)]
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = argv
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           str(script), str(out), str(cache)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def cells(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("toy-*.json")}


def samples(out: Path, name: str) -> list:
    return [json.loads(line)["ids"] for line in (out / "samples" / name.replace(".json", ".jsonl")).read_text().splitlines()]


def test_torchrun_two_processes_trains_once_and_matches_single_process_sampling(tmp_path, one_thread):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    # DDP training: the global token budget is counted once and rank 0 alone writes.
    launch(script, tmp_path / "ddp", tmp_path / "cache", procs=2)
    models = list((tmp_path / "ddp" / "models").glob("*.json"))
    assert len(models) == 1 and json.loads(models[0].read_text())["train_tokens"] == 8 * 8 * 10
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*.safetensors"))) == 1
    # The two ranks sampled their shards with the weights they trained; one process
    # sampling from rank 0's checkpoint gives the same records: the ranks kept one set of
    # weights, and sharding changes no sample.
    launch(script, tmp_path / "single", tmp_path / "cache", procs=1)
    single, sharded = cells(tmp_path / "single"), cells(tmp_path / "ddp")
    assert single.keys() == sharded.keys() and len(single) == 4
    for name in single:
        assert samples(tmp_path / "single", name) == samples(tmp_path / "ddp", name)
        assert single[name]["nfe"] == sharded[name]["nfe"] == single[name]["steps"]
        assert single[name]["metrics"] == sharded[name]["metrics"]
