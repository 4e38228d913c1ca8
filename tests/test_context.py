"""The run context: run state passed as an object, never through process variables."""

from __future__ import annotations

import ctypes
import random

import pytest

from dlmbench.context import RunContext
from dlmbench.environment import hub_offline


def test_two_runs_in_one_process_keep_every_file_under_their_own_cache(tmp_path, toy_and_builtins, monkeypatch):
    """Once, the first runner's cache leaked into the process (DLMBENCH_CACHE) and the
    second run wrote its task data and proxy evaluator into the first one's cache."""
    from dlmbench.config import build_run_config
    from dlmbench.metrics import proxy
    from dlmbench.runner import Runner

    monkeypatch.setattr(proxy, "DEFAULT_CONFIG", proxy.ProxyConfig(n_layer=1, n_embd=16, n_head=2, steps=5,
                                                                    warmup_steps=1, batch_size=8))
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice("ab cd ef gh".split()) for _ in range(6))
                                for _ in range(120)) + "\n")
    roots = {}
    for name in ("a", "b"):
        config = build_run_config(overrides={
            "name": name, "models": ["toy"], "task": f"text:{corpus}", "task_options": {"packing": "pad"},
            "out": str(tmp_path / "runs" / name), "cache": str(tmp_path / f"cache-{name}"),
            "metrics": ["gen-ppl", "unigram-entropy"],
            "budget": {"seq_len": 8, "steps": [2], "num_samples": 4, "batch_size": 8, "train_tokens": 8 * 8 * 3,
                       "seeds": [0], "sample_batch_size": 4},
        })
        context = RunContext(cache=tmp_path / f"cache-{name}", offline=True)
        records = Runner(config, toy_and_builtins, context, echo=lambda *_: None, progress=False).run()
        assert all(r.ok for r in records), [r.error for r in records]
        assert records[-1].metrics["gen-ppl"].config["evaluator"] == proxy.PROXY
        roots[name] = context.cache
    for name, root in roots.items():
        assert list((root / "tasks").iterdir()), "task data cached under its own root"
        assert list((root / "checkpoints").glob("toy-*.safetensors"))
        assert [p.name for p in (root / "evaluators").iterdir() if p.name.startswith("proxy-")]
    assert not (tmp_path / ".dlmbench-cache").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-a", "cache-b", "corpus.txt", "runs"]


#: Every spelling huggingface_hub's ``constants._is_true`` can be handed, and some it rejects.
VALUES = ["1", "ON", "on", "On", "YES", "yes", "TRUE", "true", "True", "0", "OFF", "off", "no", "false",
          "FALSE", "", " 1", "2", "y"]


@pytest.mark.parametrize("value", VALUES)
def test_every_offline_check_reads_HF_HUB_OFFLINE_as_huggingface_hub_does(value, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    expected = constants._is_true(value or None)
    assert hub_offline() is expected
    assert RunContext.create().offline is expected


def test_transformers_offline_counts_only_when_HF_HUB_OFFLINE_is_unset_or_empty(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for hub, transformers, expected in (("0", "1", False), ("", "1", True), (None, "yes", True), (None, "0", False)):
        if hub is None:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        else:
            monkeypatch.setenv("HF_HUB_OFFLINE", hub)
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", transformers)
        assert hub_offline() is expected, (hub, transformers)


def test_the_cli_context_agrees_with_the_library_and_joins_no_world_unless_asked(monkeypatch, tmp_path):
    from dlmbench.cli import run_context
    from dlmbench.config import build_run_config

    config = build_run_config(overrides={"models": ["ar"], "cache": str(tmp_path / "c")})
    called = []
    monkeypatch.setattr("dlmbench.distributed.setup", lambda: called.append(1))
    monkeypatch.setattr("dlmbench.environment.hub_reachable", lambda: True)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for value in ("0", "true"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        context = run_context(config)
        assert context.offline is (value == "true")
        assert context.cache == tmp_path / "c" and context.world.size == 1
    assert not called, "only the commands that train or sample join a torchrun world"


def test_an_unreachable_hub_makes_the_context_offline_with_its_reason(monkeypatch, tmp_path):
    import os

    from dlmbench.cli import run_context
    from dlmbench.config import build_run_config

    monkeypatch.setattr(os, "environ", {})  # no HF_* switch set; the CLI's writes land here
    monkeypatch.setattr("dlmbench.environment.hub_reachable", lambda: False)
    context = run_context(build_run_config(overrides={"models": ["ar"], "cache": str(tmp_path)}))
    assert context.offline and "cannot be reached" in context.offline_reason
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the HF libraries now fail at once


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_threads_come_from_the_config_default_one_and_are_recorded_with_each_checkpoint(
        torch_threads, toy_config, toy_registry, tmp_path, monkeypatch):
    """Float reductions follow the thread count, so a run sets it rather than inherit it."""
    from dlmbench.cli import run_context
    from dlmbench.config import build_run_config
    from dlmbench.results import load_records
    from dlmbench.runner import Runner

    torch = torch_threads
    monkeypatch.setattr("dlmbench.environment.hub_reachable", lambda: True)
    torch.set_num_threads(2)
    config = build_run_config(overrides={"models": ["ar"], "cache": str(tmp_path / "c")})
    assert config.threads == 1 and run_context(config).threads == 1 and torch.get_num_threads() == 1
    cfg = toy_config(threads=2)
    context = RunContext.create(cache=cfg.cache, device="cpu", offline=True, threads=cfg.threads)
    assert torch.get_num_threads() == 2
    Runner(cfg, toy_registry, context, echo=lambda *_: None, progress=False).run()
    _, models = load_records([cfg.out_dir])
    assert models and all(m.threads == 2 and m.torch_version == torch.__version__ for m in models)


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (<malloc.h>): every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def glibc():
    """glibc's malloc interface, or skip where the C library is another."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        pytest.skip("glibc >= 2.33 only (mallinfo2)")
    return libc


@pytest.mark.parametrize("where", ["context", "worker"])
def test_cpu_runs_keep_freed_activations_in_the_heap(where, torch_threads):
    """A 16 MiB activation (a tiny model's MLP at batch 128 is 8 MiB) is over glibc's default
    mmap threshold, so untuned it gets pages of its own, faulted in again at every step."""
    import torch

    from dlmbench import workers
    from dlmbench.environment import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

    libc = glibc()
    for parameter in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):  # glibc's defaults, whatever an earlier test set
        libc.mallopt(parameter, 128 << 10)
    libc.malloc_trim(0)  # and no free heap kept from before
    blocks = libc.mallinfo2().hblks
    x = torch.empty(4 << 20)  # float32: 16 MiB
    assert libc.mallinfo2().hblks == blocks + 1  # the untuned allocator maps it on its own
    del x
    if where == "context":
        RunContext.create(device="cpu", offline=True, threads=1)
    else:
        class OneSlot:
            def get(self):
                return workers.Slot("cpu", 1)

        workers._take_slot(OneSlot())
    x = torch.empty(4 << 20)
    assert libc.mallinfo2().hblks == blocks
    del x
