"""The offline proxy evaluator: trained once, cached, labelled, and it learns the text."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from dlmbench.config import build_run_config
from dlmbench.data import Generation
from dlmbench.leaderboard import render_markdown
from dlmbench.metrics import proxy
from dlmbench.metrics.genppl import GenPPL, GenPPLConfig
from dlmbench.build import build_metrics, build_task
from dlmbench.config import MetricEntry
from dlmbench.context import RunContext
from dlmbench.plugins import build_registry, get_plugin_manager
from dlmbench.records import CellRecord

pytest.importorskip("transformers")

WORDS = "the cat sat on a mat dog ran far away and then slept bird sang".split()


def sentence(rng: random.Random) -> str:  # a strongly patterned language: easy to learn
    return " ".join(["the", rng.choice(["cat", "dog", "bird"]), rng.choice(["sat", "ran", "sang"]), "and", "then", "slept"])


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(proxy, "DEFAULT_CONFIG", proxy.ProxyConfig(n_layer=1, n_embd=32, n_head=2, steps=60, warmup_steps=5))
    rng = random.Random(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(sentence(rng) for _ in range(400)) + "\n")
    registry = build_registry(get_plugin_manager(autoload=False))
    config = build_run_config(overrides={
        "models": ["ar"], "task": f"text:{path}", "task_options": {"packing": "pad"},
        "budget": {"seq_len": 16, "steps": [4], "num_samples": 8},
    })
    context = RunContext(cache=tmp_path / "cache", offline=True)
    return config, registry, build_task(config, registry, context), context


def test_offline_oracle_budget_uses_the_labelled_proxy(setup):
    config, registry, data, context = setup
    entries = [MetricEntry(name="gen-ppl"), MetricEntry(name="unigram-entropy")]
    metrics = build_metrics(entries, registry, data, "oracle", context)
    assert [m.config.evaluator for m in metrics] == [proxy.PROXY, proxy.PROXY]
    online = replace(context, offline=False)
    assert build_metrics(entries[:1], registry, data, "oracle", online)[0].config.evaluator == "gpt2-large"
    chosen = [MetricEntry(name="gen-ppl", options={"evaluator": "/my/lm"})]
    assert build_metrics(chosen, registry, data, "oracle", context)[0].config.evaluator == "/my/lm"


def test_proxy_is_trained_once_learns_the_text_and_is_labelled(setup, monkeypatch):
    _, _, data, context = setup
    path = proxy.ensure_proxy_evaluator(data, context.evaluators)
    assert path.parent == context.cache / "evaluators"
    assert (path / "config.json").exists() and "NOT comparable" in (path / "DLMBENCH_PROXY.txt").read_text()
    import dlmbench.training

    monkeypatch.setattr(dlmbench.training, "fit", lambda *a, **k: pytest.fail("retrained"))
    assert proxy.ensure_proxy_evaluator(data, context.evaluators) == path  # cached

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path)  # the task's own ids, through the HF tokenizer
    text = "the dog ran and then slept"
    assert hf(text, add_special_tokens=False)["input_ids"] == data.tokenizer.encode(text)

    metric = GenPPL(GenPPLConfig(evaluator=proxy.PROXY), context)
    rng = random.Random(1)
    real = [sentence(rng) for _ in range(16)]
    shuffled = [" ".join(rng.sample(s.split(), 6)) for s in real]
    good = metric.compute(Generation(torch.zeros(16, 1), [[]] * 16, real), data)
    bad = metric.compute(Generation(torch.zeros(16, 1), [[]] * 16, shuffled), data)
    assert good.value < 0.5 * bad.value  # it learned the word order
    assert good.details["evaluator"] == "proxy" and good.details["evaluator_path"] == str(path)

    cell = CellRecord.model_validate({
        "cell_id": "c", "run": "r", "task": "t", "task_fingerprint": "f", "budget_hash": "b", "device": "cpu",
        "versions": {}, "budget": {"seq_len": 16, "steps": [4], "num_samples": 16, "batch_size": 1,
                                   "train_tokens": 1, "seeds": [0], "evaluator": "oracle"},
        "label": "ar/ancestral", "model": "ar", "sampler": "ancestral", "steps": 4, "seed": 0, "nfe": 4.0,
        "wall_time_s": 1.0, "status": "ok",
        "metrics": {"gen-ppl": {"value": good.value, "stderr": None, "higher_is_better": False,
                                "config": {"evaluator": "proxy"}, "details": good.details}}})
    table = render_markdown([cell])
    assert "Evaluator: `proxy`" in table and "NOT comparable with GPT-2 Large" in table
