"""mauve: features equal mauve-text's own featurization; identical vs degenerate text."""

from __future__ import annotations

import random
import sys

import pytest
import torch

from dlmbench.data import DataSpec, Generation
from dlmbench.errors import ConfigError
from dlmbench.context import RunContext
from dlmbench.metrics import mauve as mauve_metric
from dlmbench.metrics import proxy
from dlmbench.metrics.genppl import load_model, load_tokenizer, retokenize
from dlmbench.metrics.mauve import Mauve, MauveConfig, featurize
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer

transformers = pytest.importorskip("transformers")
mauve = pytest.importorskip("mauve")

WORDS = "the cat sat on a mat dog ran far away and then slept bird sang loud".split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    """A tiny GPT-2 and word-level tokenizer saved locally ('gpt2' in the path, so
    mauve-text's own loader accepts it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("tiny-gpt2")
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return str(path)


def test_features_match_mauve_text_featurization(featurizer):
    from mauve.utils import featurize_tokens_from_model
    from transformers import AutoModel

    rng = random.Random(0)
    texts = [sentence(rng) for _ in range(7)]
    rows = retokenize(load_tokenizer(featurizer), texts, 1024)
    ours = featurize(load_model(featurizer, "cpu"), rows, "cpu")
    base = AutoModel.from_pretrained(featurizer, use_safetensors=True).eval()  # what mauve-text loads: no LM head
    theirs = featurize_tokens_from_model(base, [torch.tensor(r)[None] for r in rows], batch_size=3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def task_(n: int, prefix_len: int = 0) -> TaskData:
    rng = random.Random(1)
    tok = TextTokenizer.word_level(WORDS)
    seq = 12
    rows = []
    for _ in range(n):
        ids = tok.encode(sentence(rng))[: seq - 1]
        rows.append(ids + [3] * (seq - len(ids)))
    valid = torch.tensor(rows).reshape(n, seq)
    return TaskData("t", DataSpec(tok.vocab_size, seq, 0, 2, 3, 4, prefix_len), tok, valid[:0], valid)


def test_mauve_separates_matching_from_degenerate_text(featurizer):
    task = task_(200)
    metric = Mauve(MauveConfig(evaluator=featurizer, num_buckets=5))
    assert metric.applies_to(task)
    rng = random.Random(2)
    same = [sentence(rng) for _ in range(60)]  # the same distribution as the held-out text
    degenerate = ["dog dog dog dog" if i % 2 else "the the the" for i in range(60)]
    good = metric.compute(Generation(torch.zeros(60, 1), [[]] * 60, same), task)
    bad = metric.compute(Generation(torch.zeros(60, 1), [[]] * 60, degenerate + [""]), task)
    assert good.value > 0.8 and bad.value < 0.3 < good.value - bad.value
    assert bad.details["empty_samples_dropped"] == 1 and good.details["human_texts"] == 60
    assert bad.n == 60 and good.n == 60  # the empty sample is not among those it rests on
    assert good.details["evaluator"] == featurizer and good.details["mauve_scaling_factor"] == 5.0


def test_missing_extra_is_a_clear_error(featurizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "mauve", None)
    with pytest.raises(ConfigError, match=r"^metric mauve needs mauve-text: pip install 'dlmbench\[mauve\]'$"):
        Mauve(MauveConfig(evaluator=featurizer)).compute(Generation(torch.zeros(1, 1), [[]], ["a"]), task_(4))


def mauve_by_hand(featurizer, human, generated, cfg):
    """mauve-text on the features of each text tokenized alone and cut to the setting's
    ``max_text_length`` tokens, with the setting's clustering and scaling."""
    tok, model = load_tokenizer(featurizer), load_model(featurizer, "cpu")

    def features(texts):
        return featurize(model, [tok(t, add_special_tokens=False)["input_ids"][: cfg.max_text_length] for t in texts],
                         "cpu").numpy()

    return mauve.compute_mauve(
        p_features=features(human), q_features=features(generated), num_buckets=cfg.num_buckets,
        mauve_scaling_factor=cfg.mauve_scaling_factor, kmeans_explained_var=cfg.kmeans_explained_var,
        seed=cfg.seed, verbose=False,
    ).mauve


def test_mauve_is_mauve_texts_number_against_the_last_held_out_rows(featurizer, capsys):
    """The human side is the continuations (after the prefix) of the last n validation rows,
    n the number of samples drawn; blank samples are dropped from the model side only; every
    setting reaches mauve-text, which prints nothing; details record each. Catches the first
    rows or the prefix taken as human text, a truncation, cluster count, explained variance,
    scaling or seed not passed on, and a lost or miscounted detail."""
    task = task_(40, prefix_len=2)
    rng = random.Random(3)
    texts = [sentence(rng) for _ in range(15)] + ["", "  "]
    cfg = MauveConfig(evaluator=featurizer, max_text_length=4, num_buckets=3, mauve_scaling_factor=2.0,
                      kmeans_explained_var=0.7, seed=3, device="cpu")
    tok = task.tokenizer
    human = [tok.decode(tok.cut_at_eos(row[2:])) for row in task.valid[-17:].tolist()]
    value = Mauve(cfg).compute(Generation(torch.zeros(17, 1), [[]] * 17, texts), task)
    assert capsys.readouterr().out == ""
    assert value.value == pytest.approx(mauve_by_hand(featurizer, human, texts[:15], cfg), rel=1e-9)
    assert value.stderr is None and value.n == 15 and value.undefined is None
    assert value.details == {
        "evaluator": featurizer, "human_texts": 17, "generated_texts": 15, "empty_samples_dropped": 2,
        "max_text_length": 4, "num_buckets": 3, "mauve_scaling_factor": 2.0, "seed": 3,
    }


def test_every_setting_reaches_compute_mauve_quietly(featurizer, monkeypatch):
    """mauve-text is called with the configured clustering (a non-default explained
    variance), scaling and seed, and ``verbose=False`` (recorded by a stand-in for
    ``mauve.compute_mauve``). Catches a setting left at mauve-text's default."""
    import types

    calls = []
    monkeypatch.setattr(mauve, "compute_mauve", lambda **kw: calls.append(kw) or types.SimpleNamespace(mauve=0.5))
    rng = random.Random(5)
    texts = [sentence(rng) for _ in range(6)]
    cfg = MauveConfig(evaluator=featurizer, num_buckets=2, mauve_scaling_factor=3.0, kmeans_explained_var=0.6,
                      seed=7, device="cpu")
    value = Mauve(cfg).compute(Generation(torch.zeros(6, 1), [[]] * 6, texts), task_(10))
    assert value.value == 0.5 and len(calls) == 1
    kw = calls[0]
    assert kw["p_features"].shape == kw["q_features"].shape == (6, 32)
    assert {k: v for k, v in kw.items() if not k.endswith("_features")} == {
        "num_buckets": 2, "mauve_scaling_factor": 3.0, "kmeans_explained_var": 0.6, "seed": 7, "verbose": False}


def test_mauve_with_the_proxy_featurizes_with_the_cached_proxy_and_labels_it(featurizer, tmp_path):
    """``evaluator=proxy`` reads the proxy cached for this task under the run's evaluators
    directory (here a saved model put where it is looked for, so nothing trains) and says so
    in details. Catches resolving the proxy for another task or context, and a lost or
    renamed proxy label."""
    import shutil

    task, context = task_(30), RunContext(cache=tmp_path / "cache", offline=True)
    where = proxy.proxy_dir(task, proxy.DEFAULT_CONFIG, context.evaluators)
    shutil.copytree(featurizer, where)
    rng = random.Random(4)
    texts = [sentence(rng) for _ in range(12)]
    cfg = MauveConfig(evaluator=proxy.PROXY, num_buckets=3, device="cpu")
    value = Mauve(cfg, context).compute(Generation(torch.zeros(12, 1), [[]] * 12, texts), task)
    human = [task.tokenizer.decode(task.tokenizer.cut_at_eos(row)) for row in task.valid[-12:].tolist()]
    assert value.value == pytest.approx(mauve_by_hand(str(where), human, texts, cfg), rel=1e-9)
    assert value.details["evaluator"] == "proxy" and value.details["evaluator_path"] == str(where)
    assert value.details["proxy_note"] == proxy.PROXY_NOTE


def test_mauve_loads_its_featurizer_on_the_chosen_device_as_the_run_allows(featurizer, monkeypatch):
    """``device=auto`` is cuda when there is one and cpu otherwise, an explicit device is
    kept, and the model, tokenizer and features follow it; the loaders get the run's offline
    flag. The loaders are wrapped to record what they are asked for (and still load on the
    cpu). Catches a device or offline flag not passed on, and a wrong auto choice."""
    calls = []
    monkeypatch.setattr(mauve_metric, "load_tokenizer",
                        lambda name, offline=True: calls.append(("tokenizer", name, offline)) or load_tokenizer(name))
    monkeypatch.setattr(mauve_metric, "load_model",
                        lambda name, device, offline=True: calls.append(("model", name, device, offline))
                        or load_model(name, "cpu"))
    monkeypatch.setattr(mauve_metric, "featurize",
                        lambda model, rows, device: calls.append(("features", device)) or featurize(model, rows, "cpu"))
    task = task_(20)
    gen = Generation(torch.zeros(10, 1), [[]] * 10, [sentence(random.Random(i)) for i in range(10)])
    for cuda, device, offline, chosen in [(True, "auto", False, "cuda"), (False, "auto", True, "cpu"),
                                          (True, "cpu", True, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        calls.clear()
        cfg = MauveConfig(evaluator=featurizer, num_buckets=2, device=device)
        Mauve(cfg, RunContext(offline=offline)).compute(gen, task)
        assert calls == [("tokenizer", featurizer, offline), ("model", featurizer, chosen, offline),
                         ("features", chosen), ("features", chosen)]


def test_mauve_applies_to_unconditional_tasks_with_held_out_text():
    """MAUVE needs held-out text to compare with, and is not for tasks with references.
    Catches either condition dropped and an off-by-one on the number of held-out rows."""
    assert Mauve().applies_to(task_(1))
    assert not Mauve().applies_to(task_(0))
    with_refs = task_(3)
    with_refs.references = ["a"] * 3
    assert not Mauve().applies_to(with_refs)
