"""``dlmbench run --smoke``: a paper config at its true model sizes and sequence length,
shown to build, train, sample and score on a CPU in minutes, offline.

Only what needs the hub is swapped, each for a local stand-in of the reference's shape:
the data become 2,000 sentences of the embedded grammar (250 documents) in the task's own
schema (OpenWebText ``{"text"}``, WMT14 ``{"translation"}``, XSum ``{"document",
"summary"}``); ``gpt2`` and ``t5-small`` become tokenizers of their sizes trained on that
text (50,257 and 32,100 ids, :mod:`dlmbench.testing.tokenizers`), the latter beside a
randomly initialised T5-small encoder (its architecture, not its weights); the
``gpt2-large`` evaluator keeps its width, heads and vocabulary at 2 of its 36 layers. The
budget becomes 2 optimiser steps at batch 2 and one 2-step cell of 2 samples per model.
Everything else (model presets, sequence lengths, samplers, metrics, the runner, the
records) is the config's own: a smoke run that passes says the config runs end to end,
not what its numbers would be. :class:`PhaseClock` prints time and peak memory per phase.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlmbench.config import RunConfig
from dlmbench.errors import ConfigError

#: the stand-in (a directory under the smoke root) for each hub id, as configs spell them
REPLACES = {"gpt2": "gpt2", "openai-community/gpt2": "gpt2", "t5-small": "t5-small",
            "google-t5/t5-small": "t5-small", "gpt2-large": "gpt2-large-2layers",
            "openai-community/gpt2-large": "gpt2-large-2layers"}
STEPS, BATCH, SAMPLES = 2, 2, 2  # optimiser steps, training batch, samples per cell


def grammar_text(lines: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``lines`` (sentence, translation, summary) triples of the embedded grammar."""
    from dlmbench.tasks.english import english_grammar, summarize, translate

    trees = english_grammar().sample_trees(np.random.default_rng(seed), lines)
    return [(" ".join(t.words()), " ".join(translate(t)), " ".join(summarize(t))) for t in trees]


def write_data(task: str, triples: list[tuple[str, str, str]], path: Path) -> Path:
    """The triples as jsonl rows in ``task``'s hub schema (an OWT or XSum document is 8 sentences)."""
    if task == "owt":
        rows = [{"text": " ".join(s for s, _, _ in triples[i:i + 8])} for i in range(0, len(triples), 8)]
    elif task.startswith("wmt14"):
        rows = [{"translation": {"de": s, "en": t}} for s, t, _ in triples]
    elif task == "xsum":
        rows = [{"document": " ".join(s for s, _, _ in triples[i:i + 8]), "summary": triples[i][2], "id": str(i)}
                for i in range(0, len(triples), 8)]
    else:
        raise ConfigError(f"--smoke: task {task!r} is not a paper-scale hub task; use owt, wmt14-de-en, "
                          f"wmt14-en-de or xsum (the embedded tasks already run offline)")
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def build_standins(root: Path, lines: int) -> dict[str, str]:
    """The stand-in directories under ``root`` (built once), by the hub ids they replace."""
    from dlmbench.testing.tokenizers import gpt2_standin, t5_standin

    done = root / "complete.json"
    dirs = {"gpt2": root / "gpt2", "t5": root / "t5-small", "evaluator": root / "gpt2-large-2layers"}
    assert {d.name for d in dirs.values()} == set(REPLACES.values())
    if not done.exists() or json.loads(done.read_text()) != {"lines": lines}:
        from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5EncoderModel

        text = [s for triple in grammar_text(lines) for s in triple]
        gpt2_standin(text, dirs["gpt2"])
        t5_standin(text, dirs["t5"])
        dirs["evaluator"].mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # its GPT-2 tokenizer
            shutil.copyfile(dirs["gpt2"] / name, dirs["evaluator"] / name)
        with torch.random.fork_rng():  # the same random weights on every machine
            torch.manual_seed(0)
            T5EncoderModel(T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                                    feed_forward_proj="relu", dropout_rate=0.0)).save_pretrained(
                dirs["t5"], safe_serialization=True)
            GPT2LMHeadModel(GPT2Config(n_embd=1280, n_head=20, n_layer=2, n_positions=1024)).save_pretrained(
                dirs["evaluator"], safe_serialization=True)
        done.write_text(json.dumps({"lines": lines}))
    return {repo: str(root / name) for repo, name in REPLACES.items()}


def smoke_config(config: RunConfig, root: Path, lines: int = 2000) -> RunConfig:
    """``config`` with its hub parts replaced by stand-ins under ``root`` and the smoke budget."""
    from dlmbench.build import build_model_config
    from dlmbench.hub_needs import hub_needs
    from dlmbench.plugins import build_registry, get_plugin_manager

    registry = build_registry(get_plugin_manager())
    for entry in config.models:
        if entry.weights is not None:
            raise ConfigError(f"--smoke trains every model from scratch; model {entry.name!r} names weights "
                              f"{entry.weights!r}: remove them, or run the config itself")
    root.mkdir(parents=True, exist_ok=True)
    data = write_data(config.task, grammar_text(lines, seed=1), root / f"{config.task}.jsonl")
    standin = build_standins(root, lines)
    task_cls, _ = registry.task(config.task)
    task_values = task_cls.Config(**config.task_options).model_dump()  # the defaults name hub ids too
    task_options = {**config.task_options, **_standins(task_values, standin), "data_files": str(data)}
    if "valid_documents" in task_cls.Config.model_fields:  # a few rows held out: the bound pass stays short
        task_options["valid_documents"] = lines // 40 if config.task == "owt" else 8
    models = []
    for entry in config.models:
        swapped = _standins(build_model_config(entry, config.preset, registry).model_dump(), standin)
        tokenizer = standin.get(entry.tokenizer, entry.tokenizer) if entry.tokenizer else None
        models.append(entry.model_copy(update={"options": {**entry.options, **swapped}, "tokenizer": tokenizer}))
    b = config.budget
    budget = b.model_copy(update={
        "steps": [STEPS], "seeds": [0], "num_samples": SAMPLES, "batch_size": BATCH, "sample_batch_size": SAMPLES,
        "train_tokens": BATCH * b.seq_len * STEPS, "train_bytes": None, "train_seeds": None,
        "evaluator": standin.get(b.evaluator, b.evaluator)})
    metrics = None if config.metrics is None else [
        m.model_copy(update={"options": {**m.options, **_standins(m.options, standin)}}) for m in config.metrics]
    name = f"{config.name}-smoke"
    smoke = RunConfig.model_validate({**config.model_dump(), "name": name, "task_options": task_options,
                                      "models": [m.model_dump() for m in models], "budget": budget.model_dump(),
                                      "metrics": None if metrics is None else [m.model_dump() for m in metrics],
                                      "out": str(Path(config.out_dir).parent / name) if config.out else None})
    left = hub_needs(smoke, registry)
    if left:
        raise ConfigError("--smoke has no local stand-in for " + "; ".join(f"{n.repo} ({n.what})" for n in left))
    return smoke


def _standins(values: dict[str, Any], standin: dict[str, str]) -> dict[str, str]:
    """The entries of ``values`` that name a hub id, each set to its stand-in's directory."""
    return {k: standin[v] for k, v in values.items() if isinstance(v, str) and v in standin}


class PhaseClock:
    """An ``echo`` that stamps each line with the seconds since the previous one and the
    process's peak memory so far (resident set; with CUDA, the peak allocated since the
    previous line), and keeps them for :meth:`summary`."""

    def __init__(self, echo: Callable[[str], Any]):
        self.echo, self.last, self.rows = echo, time.perf_counter(), []

    def __call__(self, line: str) -> None:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        gpu = self._cuda_peak()
        self.rows.append((line.split("\n")[0][:90], seconds, rss, gpu))
        mem = f"peak RSS {rss:.2f} GiB" + (f", CUDA {gpu:.2f} GiB" if gpu is not None else "")
        self.echo(f"[{seconds:7.1f}s | {mem}] {line}")

    @staticmethod
    def _cuda_peak() -> float | None:
        if not torch.cuda.is_available():
            return None
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return peak

    def summary(self) -> str:
        from tabulate import tabulate

        return tabulate([(line, f"{s:.1f}", f"{rss:.2f}", "-" if gpu is None else f"{gpu:.2f}")
                         for line, s, rss, gpu in self.rows],
                        headers=["phase (ends with this line)", "seconds", "peak RSS so far (GiB)", "CUDA peak (GiB)"])
