"""Tasks take their run state from the RunContext: the cache root, and whether the hub
is offline. Two runs in one process must not share a cache through globals or the
environment, and loading a task must not change the environment."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from dlmbench.context import RunContext
from dlmbench.errors import HubUnavailableError
from dlmbench.task import task_context
from dlmbench.tasks.text import PairsTask, TextTask

WORDS = [f"w{i}" for i in range(40)]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.fixture
def data(tmp_path) -> tuple[str, str]:
    rng = random.Random(0)
    sent = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))  # noqa: E731
    text, pairs = tmp_path / "c.txt", tmp_path / "p.jsonl"
    text.write_text("\n".join(sent() for _ in range(120)))
    pairs.write_text("".join(json.dumps({"source": sent(), "target": sent()}) + "\n" for _ in range(120)))
    return str(text), str(pairs)


def test_each_context_caches_under_its_own_root(tmp_path, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    text, pairs = data
    a, b = RunContext(cache=tmp_path / "a"), RunContext(cache=tmp_path / "b")
    cfg = TextTask.Config(vocab_size=280, valid_documents=20)
    pcfg = PairsTask.Config(vocab_size=280, valid_documents=20)
    in_a = TextTask(cfg, text).load(16, 0, 0, context=a)
    assert in_a.info["cache"] == "miss" and Path(in_a.info["cache_dir"]).parent == a.tasks
    assert PairsTask(pcfg, pairs).load(16, 4, 0, context=a).info["cache"] == "miss"
    after_a = files_under(tmp_path / "a")
    assert after_a and all(p.is_relative_to(a.tasks) for p in after_a)
    assert not files_under(tmp_path / "b") and not files_under(tmp_path / ".dlmbench-cache")
    # the same task under another root builds there, and does not read or touch the first
    in_b = TextTask(cfg, text).load(16, 0, 0, context=b)
    assert in_b.info["cache"] == "miss" and Path(in_b.info["cache_dir"]).parent == b.tasks
    assert PairsTask(pcfg, pairs).load(16, 4, 0, context=b).info["cache"] == "miss"
    assert files_under(tmp_path / "a") == after_a
    assert all(p.is_relative_to(b.tasks) for p in files_under(tmp_path / "b"))
    assert torch.equal(in_a.train, in_b.train) and in_a.fingerprint() == in_b.fingerprint()
    assert TextTask(cfg, text).load(16, 0, 0, context=a).info["cache"] == "hit"
    assert not files_under(tmp_path / ".dlmbench-cache")


def test_without_a_context_the_working_directory_caches(tmp_path, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    text, _ = data
    built = TextTask(TextTask.Config(vocab_size=280, valid_documents=20), text).load(16, 0, 0)
    assert Path(built.info["cache_dir"]).parent == Path(".dlmbench-cache/tasks")
    assert files_under(tmp_path / ".dlmbench-cache")


def test_default_context_is_this_process(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    ctx = task_context(None)
    assert ctx.cache == Path(".dlmbench-cache") and ctx.device == torch.device("cpu") and not ctx.offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert task_context(None).offline
    given = RunContext(cache=Path("elsewhere"))
    assert task_context(given) is given


def test_hub_tasks_read_offline_from_the_context_and_leave_the_environment_alone(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from dlmbench.tasks import hub

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DLMBENCH_ONLINE"):
        monkeypatch.delenv(var, raising=False)  # the libraries stay offline: they read these at import
    before = dict(os.environ)
    ctx = RunContext(cache=tmp_path / "cache", offline=True, offline_reason="offline by request")
    with pytest.raises(HubUnavailableError, match=r"hub is offline \(offline by request\)"):
        hub.OWTTask(hub.OWTConfig(tokenizer="bpe", hf_cache_dir=str(tmp_path / "hf"))).load(64, 0, 0, context=ctx)
    with pytest.raises(HubUnavailableError, match=r"tokenizer 'gpt2'.*\(offline by request\)"):
        hub.OWTTask(hub.OWTConfig(hf_cache_dir=str(tmp_path / "hf"))).load(64, 0, 0, context=ctx)
    assert dict(os.environ) == before
