"""A cached checkpoint is reused only when it is whole: with its record, unchanged."""

from __future__ import annotations

import pytest

from dlmbench.runner import Runner


def run(cfg, registry, **kw):
    messages = []
    records = Runner(cfg, registry, echo=messages.append, progress=False, **kw).run()
    return records, messages


def checkpoint(cfg):
    from pathlib import Path

    (path,) = (Path(cfg.cache) / "checkpoints").glob("toy-*.safetensors")
    return path


def test_a_checkpoint_without_its_record_is_trained_again_and_the_record_comes_back(toy_config, toy_registry):
    """Once, a crash between the checkpoint and its record lost the model record for good:
    the training table and likelihood row vanished from every later run."""
    cfg = toy_config()
    run(cfg, toy_registry)
    path = checkpoint(cfg)
    path.with_suffix(".json").unlink()  # what a kill between the two writes leaves
    _, messages = run(toy_config(budget={"seeds": [7]}), toy_registry)
    assert any(m.startswith("[toy] training") for m in messages) and not any("reusing" in m for m in messages)
    assert path.with_suffix(".json").exists()


def test_a_changed_checkpoint_fails_its_cells_with_the_fix(toy_config, toy_registry):
    cfg = toy_config()
    run(cfg, toy_registry)
    path = checkpoint(cfg)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit of one weight: still a loadable safetensors file
    path.write_bytes(bytes(data))
    records, _ = run(toy_config(budget={"seeds": [7]}), toy_registry)
    errors = [r for r in records if not r.ok]
    assert errors and all("does not match the checksum" in r.error and "--retrain" in r.error for r in errors)


def test_retrain_replaces_the_checkpoint_once_per_run(toy_config, toy_registry):
    cfg = toy_config(models=["toy", {"name": "toy", "label": "again", "sampler_options": {"cfg_passes": 2}}])
    run(cfg, toy_registry)
    before = checkpoint(cfg).stat().st_mtime_ns
    _, messages = run(toy_config(models=cfg.models, budget={"seeds": [7]}), toy_registry, retrain=True)
    assert sum(m.startswith("[toy] training") for m in messages) == 1  # the second entry reuses the fresh one
    assert checkpoint(cfg).stat().st_mtime_ns != before


def test_the_reuse_message_says_what_matched(toy_config, toy_registry):
    run(toy_config(), toy_registry)
    _, messages = run(toy_config(budget={"seeds": [7]}), toy_registry)
    (line,) = [m for m in messages if "reusing" in m]
    assert "matches this model config, task data, training code and training budget" in line and "--retrain" in line


@pytest.mark.parametrize("flag", ["--retrain"])
def test_run_and_train_take_retrain(flag):
    from click.testing import CliRunner

    from dlmbench.cli import cli

    for command in ("run", "train"):
        assert flag in CliRunner().invoke(cli, [command, "--help"]).output


def test_a_change_to_the_plugin_code_trains_again(toy_config, toy_registry, tmp_path, monkeypatch):
    """Once, a plugin whose loss was changed to return 0 was told "reusing checkpoint" and
    its old weights were evaluated."""
    from dlmbench import checkpoint

    run(toy_config(), toy_registry)
    real = checkpoint.code_fingerprint(__import__("toyplugin").ToyModel)
    edited = {**real, "source": "0" * 16}  # what any edit of the plugin's files gives
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda cls: edited)
    _, messages = run(toy_config(budget={"seeds": [7]}), toy_registry)
    assert any(m.startswith("[toy] training") for m in messages) and not any("reusing" in m for m in messages)


def test_the_code_fingerprint_follows_the_plugin_files(tmp_path, monkeypatch):
    import importlib
    import sys

    from dlmbench.checkpoint import code_fingerprint

    package = tmp_path / "fakeplugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("import toyplugin\nclass M(toyplugin.ToyModel):\n    name = 'fake'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_fingerprint(importlib.import_module("fakeplugin.model").M)
    (package / "model.py").write_text("import toyplugin\nclass M(toyplugin.ToyModel):\n    name = 'fake'  # edited\n")
    for name in ("fakeplugin.model", "fakeplugin"):
        sys.modules.pop(name)
    second = code_fingerprint(importlib.import_module("fakeplugin.model").M)
    assert first["source"] != second["source"] and first["core"] == second["core"]
    assert first["plugin"] == "fakeplugin"
