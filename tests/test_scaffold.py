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


def test_scaffolded_plugin_installs_passes_conformance_and_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dlmbench", "new-plugin", "demo", "--dir", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    root = tmp_path / "dlmbench-demo"
    assert "created" in out.stdout and (root / "pyproject.toml").exists()
    site = tmp_path / "site"  # install beside, not into, the test environment
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(root)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "DLMBENCH_LOAD_PLUGINS": "demo"}
    listed = subprocess.run([sys.executable, "-m", "dlmbench", "plugins"], env=env,
                            capture_output=True, text=True, check=True)
    demo = next(p for p in json.loads(listed.stdout) if p["name"] == "demo")
    assert demo["version"] == "0.1.0" and "register_models" in demo["hooks"]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout
    run = subprocess.run(
        [sys.executable, "-m", "dlmbench", "run", "--models", "demo", "--steps", "2,4", "--seeds", "0",
         "--num-samples", "8", "--train-tokens", "4096", "--no-progress", "--out", str(tmp_path / "run"),
         "--cache", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("demo-*.json")]
    assert sorted(r["steps"] for r in records) == [2, 4]
    assert all(r["status"] == "ok" and r["versions"]["plugin:demo"] == "0.1.0" for r in records)
