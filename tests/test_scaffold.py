"""`dlmbench new-plugin`: the scaffold installs, loads, passes the kit and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dlmbench.errors import ConfigError
from dlmbench.scaffold import scaffold


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="lowercase"):
        scaffold("My-Model", tmp_path)


def test_scaffolded_plugin_installs_passes_conformance_and_runs(dlmbench, inner_pytest, tmp_path, monkeypatch):
    """pip installs the scaffold and a fresh interpreter finds its entry point (both
    subprocesses: an install, and entry points as a new process reads them); its tests and
    a run then go in this process, the installed copy on ``sys.path`` as PYTHONPATH puts it."""
    out = dlmbench("new-plugin", "demo", "--dir", tmp_path)
    root = tmp_path / "dlmbench-demo"
    assert out.returncode == 0 and "created" in out.stdout and (root / "pyproject.toml").exists()
    site = tmp_path / "site"  # install beside, not into, the test environment
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(root)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "DLMBENCH_LOAD_PLUGINS": "demo"}
    listed = subprocess.run([sys.executable, "-m", "dlmbench", "plugins"], env=env,
                            capture_output=True, text=True, check=True)
    demo = next(p for p in json.loads(listed.stdout) if p["name"] == "demo")
    assert demo["version"] == "0.1.0" and "register_models" in demo["hooks"]
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DLMBENCH_LOAD_PLUGINS", "demo")
    code, passed, failed = inner_pytest("--rootdir", root, root / "tests")
    assert code == 0 and passed > 0 and not failed, "\n".join(failed)[-3000:]
    run = dlmbench("run", "--models", "demo", "--steps", "2,4", "--seeds", "0", "--num-samples", "8",
                   "--train-tokens", "4096", "--no-progress", "--out", tmp_path / "run", "--cache", tmp_path / "cache",
                   cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("demo-*.json")]
    assert sorted(r["steps"] for r in records) == [2, 4]
    assert all(r["status"] == "ok" and r["versions"]["plugin:demo"] == "0.1.0" for r in records)
