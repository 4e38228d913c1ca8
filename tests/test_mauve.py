"""mauve: features equal mauve-text's own featurization; identical vs degenerate text."""

from __future__ import annotations

import random
import sys

import pytest
import torch

from dlmbench.data import DataSpec, Generation
from dlmbench.errors import ConfigError
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


def task_(n: int) -> TaskData:
    rng = random.Random(1)
    tok = TextTokenizer.word_level(WORDS)
    seq = 12
    rows = []
    for _ in range(n):
        ids = tok.encode(sentence(rng))[: seq - 1]
        rows.append(ids + [3] * (seq - len(ids)))
    valid = torch.tensor(rows)
    return TaskData("t", DataSpec(tok.vocab_size, seq, 0, 2, 3, 4), tok, valid[:0], valid)


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
    with pytest.raises(ConfigError, match=r"pip install 'dlmbench\[mauve\]'"):
        Mauve(MauveConfig(evaluator=featurizer)).compute(Generation(torch.zeros(1, 1), [[]], ["a"]), task_(4))
