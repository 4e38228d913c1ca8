"""Nobody writes outside their directories, nothing unpickles, files read alike."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dlmbench.errors import ConfigError


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "x" * 121, "a b"])
def test_a_run_name_that_is_not_a_plain_name_is_refused(name):
    from dlmbench.config import build_run_config

    with pytest.raises(ConfigError, match=r"name = .*becomes a directory name"):
        build_run_config(overrides={"models": ["ar"], "name": name})


def test_the_cli_refuses_a_run_name_that_escapes_runs(tmp_path, monkeypatch, capsys):
    from dlmbench.cli import main

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--models", "ar", "--name", "../../escaped", "--no-progress"])
    assert exit_.value.code == 2
    assert "name = '../../escaped'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


def test_a_plugin_name_that_would_become_a_path_is_refused_at_registration():
    import toyplugin

    from dlmbench.registry import Registry

    class Evil(toyplugin.ToyModel):
        name = "../../../x"

    with pytest.raises(TypeError, match="a name may use"):
        Registry().add_model(Evil, "evil-plugin")


def test_paths_built_from_names_stay_inside_their_root(tmp_path):
    from dlmbench.names import inside

    assert inside(tmp_path, "a.json") == tmp_path / "a.json"
    with pytest.raises(ConfigError, match="outside"):
        inside(tmp_path / "cells", "../../x.json")


def test_every_file_a_run_writes_has_the_same_permissions(toy_config, toy_registry):
    from dlmbench.runner import Runner

    cfg = toy_config()
    Runner(cfg, toy_registry, echo=lambda *_: None, progress=False).run()
    mask = os.umask(0)
    os.umask(mask)
    files = [p for root in (cfg.out_dir, Path(cfg.cache)) for p in root.rglob("*") if p.is_file()]
    modes = {p.relative_to(cfg.out_dir.parent).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert any(k.startswith("run/cells/") for k in modes) and any(k.endswith(".safetensors") for k in modes)
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_a_directory_of_pickled_weights_is_refused_with_the_fix(tmp_path):
    from dlmbench.metrics.genppl import load_model

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ConfigError, match=r"only pickled weights \(pytorch_model.bin\).*safe_serialization=True"):
        load_model(str(tmp_path), "cpu")


def test_the_elf_encoder_refuses_pickled_weights_too(tmp_path):
    pytest.importorskip("dlmbench_elf")
    from dlmbench_elf.encoder import load_pretrained_t5

    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ConfigError, match="only pickled weights"):
        load_pretrained_t5(str(tmp_path))


def test_models_are_asked_for_safetensors(monkeypatch, tmp_path):
    """A hub id (or a directory with both) still never falls back to the pickle."""
    from dlmbench.safe_weights import from_pretrained_safetensors

    seen = {}

    class Loader:
        @staticmethod
        def from_pretrained(name, **kwargs):
            seen.update(kwargs)
            return name

    assert from_pretrained_safetensors(Loader, "gpt2-large", "evaluator", local_files_only=True) == "gpt2-large"
    assert seen == {"use_safetensors": True, "local_files_only": True}
