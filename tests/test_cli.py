"""The command line: help, clear errors with distinct exit codes, and plugin listing.

The commands run in this process (the ``dlmbench`` fixture of ``conftest.py``): starting
an interpreter and importing torch per call cost seconds each. One test runs
``python -m dlmbench`` for real, so the module entry point itself is covered.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "dlmbench", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    for command in ("run", "train", "sample", "eval", "leaderboard", "plugins", "new-plugin", "validate-config", "ls"):
        assert command in out.stdout


def test_unknown_model_exits_2_with_did_you_mean(dlmbench, tmp_path):
    out = dlmbench("run", "--models", "mdlmm", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown model 'mdlmm'" in out.stderr and "Did you mean 'mdlm'" in out.stderr


def test_nonpositive_steps_exit_2(dlmbench, tmp_path):
    out = dlmbench("run", "--models", "ar", "--steps", "0,8", cwd=tmp_path)
    assert out.returncode == 2 and "budget.steps" in out.stderr and ">= 1" in out.stderr


def test_non_integer_steps_exit_2(dlmbench, tmp_path):
    out = dlmbench("run", "--models", "ar", "--steps", "eight", cwd=tmp_path)
    assert out.returncode == 2 and "--steps 'eight'" in out.stderr


def test_malformed_config_file_exits_2(dlmbench, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [ar]\nbudget:\n  seq_lenn: 3\n")
    out = dlmbench("validate-config", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "budget.seq_lenn = 3" in out.stderr


def test_validate_config_resolves_names(dlmbench, tmp_path):
    out = dlmbench("validate-config", "--models", "ar", "--steps", "8,32", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["budget"]["steps"] == [8, 32]
    cfg = tmp_path / "run.yaml"
    cfg.write_text("models:\n  - name: ar\n    sampler: ancestrall\n")
    out = dlmbench("validate-config", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2 and "unknown sampler 'ancestrall'" in out.stderr and "Did you mean 'ancestral'" in out.stderr


def test_missing_and_corrupted_checkpoints_exit_3(dlmbench, tmp_path):
    out = dlmbench("sample", "--models", "ar", "--checkpoint", str(tmp_path / "none.safetensors"), cwd=tmp_path)
    assert out.returncode == 3 and "does not exist" in out.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    out = dlmbench("sample", "--models", "ar", "--checkpoint", str(bad), cwd=tmp_path)
    assert out.returncode == 3 and "corrupted" in out.stderr


def test_plugins_lists_builtins_and_entry_points(dlmbench):
    out = dlmbench("plugins")
    assert out.returncode == 0
    names = {p["name"]: p for p in json.loads(out.stdout)}
    assert "dlmbench.builtin.ar" in names
    for plugin in ("elf", "mdlm", "duo"):
        assert plugin in names, f"entry point {plugin} not found; is plugins/{plugin} installed?"
        assert names[plugin]["version"] != "?" and names[plugin]["location"].endswith(".py")


def test_plugin_allowlist_env_var(dlmbench):
    out = dlmbench("plugins", env={"DLMBENCH_LOAD_PLUGINS": "mdlm"})
    names = {p["name"] for p in json.loads(out.stdout)}
    assert "mdlm" in names and "elf" not in names and "duo" not in names
    names = {p["name"] for p in json.loads(dlmbench("plugins", env={"DLMBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}).stdout)}
    assert not names & {"elf", "mdlm", "duo"}


def test_leaderboard_without_results_is_a_clear_error(dlmbench, tmp_path):
    (tmp_path / "empty").mkdir()
    out = dlmbench("leaderboard", str(tmp_path / "empty"))
    assert out.returncode == 2 and "no result records" in out.stderr
