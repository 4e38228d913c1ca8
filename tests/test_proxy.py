"""The offline proxy evaluator: trained once, cached, labelled, and it learns the text."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from dlmbench.config import build_run_config, stable_hash
from dlmbench.data import DataSpec, Generation
from dlmbench.leaderboard import render_markdown
from dlmbench.metrics import proxy
from dlmbench.metrics.genppl import GenPPL, GenPPLConfig
from dlmbench.build import build_metrics, build_task
from dlmbench.config import MetricEntry
from dlmbench.context import RunContext
from dlmbench.plugins import build_registry, get_plugin_manager
from dlmbench.records import CellRecord
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer

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


def word_task(name: str = "t", rows: int = 8) -> TaskData:
    """A tiny word-level task built in memory (no corpus file, no build cache)."""
    tok = TextTokenizer.word_level(WORDS)
    ids = tok.encode("the cat sat on a mat")
    train = torch.tensor([ids[i % 6 :] + ids[: i % 6] for i in range(rows)])
    spec = DataSpec(tok.vocab_size, 6, tok.backend.token_to_id("[PAD]"), tok.backend.token_to_id("[BOS]"),
                    tok.backend.token_to_id("[EOS]"), tok.backend.token_to_id("[MASK]"))
    return TaskData(name, spec, tok, train, train[:2])


TINY = proxy.ProxyConfig(n_layer=1, n_embd=16, n_head=2, steps=3, batch_size=4)


def test_proxy_dir_is_keyed_by_data_and_config_and_stays_inside_its_root(tmp_path):
    """The directory is ``proxy-<task name, ':' and '/' made '_'>-<hash of the data
    fingerprint and the config>`` directly under the root: a task name that is a path
    cannot leave the root, and another corpus or config gets another proxy. Catches a
    name left unsanitised, a key that ignores the data or the config, and a path outside
    the root."""
    task = word_task("text:/data/my:corpus.txt")
    path = proxy.proxy_dir(task, TINY, tmp_path)
    key = stable_hash({"data": task.fingerprint(), "config": TINY.model_dump(mode="json")})
    assert path == tmp_path / f"proxy-text__data_my_corpus.txt-{key}"
    assert path.parent == tmp_path and path.resolve().is_relative_to(tmp_path.resolve())
    assert proxy.proxy_dir(task, TINY, str(tmp_path)) == path  # a root given as a string
    assert proxy.proxy_dir(word_task("text:/data/my:corpus.txt", rows=9), TINY, tmp_path) != path
    assert proxy.proxy_dir(task, proxy.ProxyConfig(n_layer=2, n_embd=16, n_head=2, steps=3, batch_size=4),
                           tmp_path) != path


@pytest.fixture
def untrained(monkeypatch):
    """Record what the proxy's training is asked to do instead of training (its progress
    callback is still called once a step), and the progress bars it opens."""
    import dlmbench.training

    fits, bars = [], []

    def fit(model, train, *, batch_size, steps, seed, progress):
        fits.append((model, train, batch_size, steps, seed))
        for step in range(steps):
            progress(step, 0.0)

    class Bar:
        def __init__(self, total=None, desc=None, leave=True):
            self.total, self.desc, self.leave, self.n = total, desc, leave, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k=1):
            self.n += k

    monkeypatch.setattr(dlmbench.training, "fit", fit)
    monkeypatch.setattr(proxy, "tqdm", Bar)
    monkeypatch.setattr(proxy, "DEFAULT_CONFIG",
                        proxy.ProxyConfig(n_layer=1, n_embd=8, n_head=2, steps=2, batch_size=2))
    return fits, bars


def test_ensure_proxy_evaluator_builds_the_configured_gpt2_seeded_and_saves_it_labelled(tmp_path, untrained):
    """The proxy is a GPT-2 of the config's size over the task's vocabulary, sequence length
    and special ids, initialised under seed 0, fitted on the task's training split with the
    config's batch size and steps and seed 0 (one progress tick a step), saved as
    safetensors with the task's tokenizer and the not-comparable label, under a root it
    creates; another config gets its own directory beside it; a saved proxy is reused.
    Catches a setting not passed to the model, the fit or the tokenizer, an unseeded
    proxy, a missing label, and a retrain of a cached proxy."""
    import json

    import transformers

    fits, bars = untrained
    task = word_task()
    root = tmp_path / "cache" / "evaluators"  # not there yet: made with its parents
    path = proxy.ensure_proxy_evaluator(task, root, TINY)
    assert path == proxy.proxy_dir(task, TINY, root) and sorted(root.iterdir()) == [path]
    [(model, train, batch_size, steps, seed)] = fits
    assert isinstance(model, proxy._ProxyLM) and model.config is TINY and model.spec is task.spec
    assert train is task.train and (batch_size, steps, seed) == (4, 3, 0)
    assert [(b.total, b.desc, b.leave, b.n) for b in bars] == [(3, "train proxy evaluator for t", False, 3)]

    spec = task.spec
    gpt2 = dict(vocab_size=spec.vocab_size, n_positions=spec.seq_len, n_embd=16, n_layer=1, n_head=2,
                bos_token_id=spec.bos_id, eos_token_id=spec.eos_id, pad_token_id=spec.pad_id,
                loss_type="ForCausalLM")
    saved = json.loads((path / "config.json").read_text())
    assert {k: saved.get(k) for k in gpt2} == gpt2
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    assert (path / "DLMBENCH_PROXY.txt").read_text() == proxy.PROXY_NOTE + "\n"
    torch.manual_seed(0)
    fresh = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2)).state_dict()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).state_dict()
    assert fresh.keys() == loaded.keys() and all(torch.equal(fresh[k], loaded[k]) for k in fresh)

    hf = transformers.AutoTokenizer.from_pretrained(path)
    backend = task.tokenizer.backend
    for name in ("bos", "eos", "pad", "unk", "mask"):
        token = getattr(hf, f"{name}_token")
        assert token == f"[{name.upper()}]" and getattr(hf, f"{name}_token_id") == backend.token_to_id(token)
    assert hf("a dog ran", add_special_tokens=False)["input_ids"] == task.tokenizer.encode("a dog ran")

    default = proxy.ensure_proxy_evaluator(task, root)  # the module's default config, beside the first
    assert default == proxy.proxy_dir(task, proxy.DEFAULT_CONFIG, root) != path
    assert len(fits) == 2 and fits[1][0].config is proxy.DEFAULT_CONFIG
    assert proxy.ensure_proxy_evaluator(task, root, TINY) == path and len(fits) == 2  # cached


def test_resolve_evaluator_trains_the_proxy_only_when_asked(tmp_path, untrained):
    """Only the name ``proxy`` resolves to the proxy's directory, under the run context's
    evaluators; any other name is returned as given. Catches the condition inverted or
    dropped and the proxy placed outside the run's cache."""
    fits, _ = untrained
    task, context = word_task(), RunContext(cache=tmp_path / "cache", offline=True)
    assert proxy.resolve_evaluator("gpt2-large", task, context) == "gpt2-large"
    assert proxy.resolve_evaluator("/my/lm", task, context) == "/my/lm" and fits == []
    expected = proxy.proxy_dir(task, proxy.DEFAULT_CONFIG, tmp_path / "cache" / "evaluators")
    assert proxy.resolve_evaluator(proxy.PROXY, task, context) == str(expected) and len(fits) == 1
