"""Shared fixtures: an isolated registry with the toy plugin, hub-offline defaults, the CLI
run in this process, and an empty Hugging Face cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def toy_registry():
    import toyplugin

    from dlmbench.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager(autoload=False, defaults=False, extra=[toyplugin]))


@pytest.fixture
def toy_and_builtins():
    """The toy plugin beside the built-in tasks and metrics (no entry points)."""
    import toyplugin

    from dlmbench.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager(autoload=False, extra=[toyplugin]))


@pytest.fixture
def toy_config(tmp_path):
    """A tiny run on the toy task: 2 steps budgets x 2 seeds, trained for a few steps."""
    from dlmbench.config import build_run_config

    def make(**extra):
        over = {
            "name": "toy",
            "task": "toy-count",
            "models": ["toy"],
            "out": str(tmp_path / "run"),
            "cache": str(tmp_path / "cache"),
            "budget": {"seq_len": 8, "steps": [2, 4], "num_samples": 6, "batch_size": 8,
                       "train_tokens": 8 * 8 * 20, "seeds": [0, 1], "sample_batch_size": 4},
        }
        from dlmbench.config import deep_merge

        return build_run_config(overrides=deep_merge(over, extra))

    return make


@pytest.fixture
def dlmbench(capsys, monkeypatch):
    """Run ``dlmbench ARGS`` in this process (``dlmbench.cli.main``, the console script's
    own entry): ``.returncode``, ``.stdout``, ``.stderr``. A subprocess would start an
    interpreter and import torch, seconds per call. The process environment is restored
    after each call (the CLI switches the HF libraries offline when the hub cannot be reached)."""
    from dlmbench.cli import main

    def call(*args, cwd=None, env=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        before = dict(os.environ)
        os.environ.update(env or {})
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            os.environ.clear()
            os.environ.update(before)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A Hugging Face cache (hub and ``datasets``) with nothing in it, as ``HF_HOME`` set to
    an empty directory gives a fresh process: a repository in the user's own cache cannot
    make a test pass. ``empty_cache(repo)`` puts a snapshot of ``repo`` there."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    try:
        import datasets

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    except ImportError:
        pass

    def cache(repo: str, kind: str = "model") -> None:
        folder = hub / f"{kind}s--{repo.replace('/', '--')}"
        (folder / "snapshots" / "abc123").mkdir(parents=True)
        (folder / "snapshots" / "abc123" / "config.json").write_text("{}")
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("abc123")

    return cache


class _Reports:
    """The test reports of a pytest session run inside this one."""

    def __init__(self):
        self.passed, self.failed = 0, []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(f"{report.nodeid}\n{report.longreprtext}")
        elif report.passed and report.when == "call":
            self.passed += 1


@pytest.fixture
def inner_pytest():
    """Run pytest on ARGS in this process (``pytest.main`` beside the running session), as
    the author of a plugin runs it: ``(exit code, tests passed, failure texts)``. A
    subprocess would start an interpreter and import torch, seconds a run."""

    def call(*args):
        reports = _Reports()
        code = pytest.main(["-q", "-p", "no:cacheprovider", "--import-mode=importlib", *map(str, args)],
                           plugins=[reports])
        return int(code), reports.passed, reports.failed

    return call


_DECODED: dict = {}  # ZModule.verses results of this session, by module files


@pytest.fixture(scope="module")
def sword_decoded_once():
    """``ZModule.verses`` of each module decoded and cleaned once a session: the KJV alone
    (about a second of OSIS cleaning) was read ten times across test_sword, test_sources
    and test_text_tasks. The first call of each module runs the real method; the key is
    the module's path, versification and files (size, mtime), so a module a test writes
    decodes afresh; each call returns a new list, as the method does. Once requested it
    stays on for the rest of the module."""
    from dlmbench.tasks import sword

    original = sword.ZModule.verses

    def verses(self):
        files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.source_files())
        key = (str(self.path.resolve()), self.versification, files)
        if key not in _DECODED:
            _DECODED[key] = original(self)
        return list(_DECODED[key])

    mp = pytest.MonkeyPatch()
    mp.setattr(sword.ZModule, "verses", verses)
    yield
    mp.undo()


def pytest_configure(config):
    """One torch thread per xdist worker: the README's test command runs a worker per core,
    and two threads each would oversubscribe the machine."""
    if hasattr(config, "workerinput"):
        import torch

        torch.set_num_threads(1)
