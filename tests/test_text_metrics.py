"""unigram-entropy, bleu and rouge against hand-computed values."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch

from dlmbench import hookspecs
from dlmbench.data import DataSpec, Generation
from dlmbench.errors import ConfigError
from dlmbench.metrics import text as text_plugin
from dlmbench.metrics.text import BLEU, ROUGE, BLEUConfig, UnigramEntropy, unigram_entropy
from dlmbench.plugins import build_registry
from dlmbench.task import TaskData
from dlmbench.tokenizer import TextTokenizer


def task_(references=None):
    tok = TextTokenizer.word_level(["a", "b"])
    spec = DataSpec(tok.vocab_size, 4, 0, 2, 3, 4)
    empty = torch.zeros(0, 4, dtype=torch.long)
    return TaskData("t", spec, tok, empty, empty, references=references)


def gen_(texts, references=None, tokens=None):
    tokens = tokens if tokens is not None else [[] for _ in texts]
    return Generation(torch.zeros(len(texts), 1, dtype=torch.long), tokens, texts, references)


def test_registers_metrics():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(text_plugin)
    reg = build_registry(pm)
    assert set(reg.metrics) == {"unigram-entropy", "bleu", "rouge", "gen-ppl", "mauve"}
    for cls in reg.metrics.values():
        assert cls.description
    assert reg.metric("gen-ppl").higher_is_better is False


def test_lazy_imports():
    import subprocess
    import sys

    code = (
        "import sys, dlmbench.metrics.text; "
        "bad = [m for m in ('transformers', 'sacrebleu', 'rouge_score') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- unigram entropy -------------------------------------------------------------------
def test_entropy_closed_form():
    assert unigram_entropy([]) == 0.0
    assert unigram_entropy([7, 7, 7]) == 0.0
    assert unigram_entropy([1, 2, 3, 4] * 5) == pytest.approx(math.log(4))
    p = [0.75, 0.25]
    assert unigram_entropy([5, 5, 5, 9]) == pytest.approx(-sum(q * math.log(q) for q in p))


def test_entropy_metric_mean_and_stderr():
    tokens = [[1, 2], [1, 1], [1, 2, 3, 4]]  # entropies log 2, 0, log 4
    mv = UnigramEntropy().compute(gen_(["", "", ""], tokens=tokens), task_())
    h = [math.log(2), 0.0, math.log(4)]
    mean = sum(h) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in h) / 2 / 3)
    assert mv.value == pytest.approx(mean)
    assert mv.stderr == pytest.approx(se)
    assert mv.details["n"] == 3 and mv.details["ids"] == "model"
    assert UnigramEntropy.higher_is_better and "next to" in UnigramEntropy.description


# --- BLEU ------------------------------------------------------------------------------
def test_bleu_hand_checked():
    # precisions 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    mv = BLEU().compute(gen_([hyp], [ref]), task_([ref]))
    assert mv.value == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert mv.details["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert mv.details["bp"] == 1.0


def test_bleu_brevity_penalty_and_identity():
    ref = "the cat sat on the mat today"
    assert BLEU().compute(gen_([ref], [ref]), task_([ref])).value == pytest.approx(100.0)
    hyp = "the cat sat on the mat"  # all n-grams match, 6 vs 7 words
    mv = BLEU().compute(gen_([hyp], [ref]), task_([ref]))
    assert mv.value == pytest.approx(100 * math.exp(1 - 7 / 6))


def test_bleu_lowercase_variant():
    hyp, ref = "The Cat Sat On The Mat", "the cat sat on the mat"
    cased = BLEU().compute(gen_([hyp], [ref]), task_([ref]))
    elf = BLEU(BLEUConfig(lowercase=True, use_effective_order=True))
    lower = elf.compute(gen_([hyp], [ref]), task_([ref]))
    assert cased.value < 100.0 and lower.value == pytest.approx(100.0)
    assert "case:lc" in lower.details["signature"] and "eff:yes" in lower.details["signature"]


def test_bleu_needs_references():
    assert not BLEU().applies_to(task_())
    assert BLEU().applies_to(task_(["x"]))
    with pytest.raises(ConfigError):
        BLEU().compute(gen_(["a b"]), task_())


# --- ROUGE -----------------------------------------------------------------------------
def test_rouge_hand_checked():
    refs = ["the cat sat on the mat", "the cat sat"]
    hyps = ["the cat sat", "the cat sat"]
    mv = ROUGE().compute(gen_(hyps, refs), task_(refs))
    # example 1: R1 P=1 R=3/6 -> F=2/3; R2 P=1 R=2/5 -> F=4/7; RL LCS 3 -> 2/3. Example 2: 1
    r1 = [200 / 3, 100.0]
    r2 = [400 / 7, 100.0]
    assert mv.value == pytest.approx(sum(r1) / 2)
    assert mv.details["rougeL"] == pytest.approx(sum(r1) / 2)
    assert mv.details["rouge1"] == pytest.approx(sum(r1) / 2)
    assert mv.details["rouge2"] == pytest.approx(sum(r2) / 2)
    assert mv.stderr == pytest.approx(abs(r1[0] - r1[1]) / 2)  # n = 2: |a - b| / 2
    assert mv.details["rouge2_stderr"] == pytest.approx(abs(r2[0] - r2[1]) / 2)


def test_rouge_stems():
    refs, hyps = ["cats running"], ["cat run"]
    assert ROUGE().compute(gen_(hyps, refs), task_(refs)).value == pytest.approx(100.0)
    from dlmbench.metrics.text import ROUGEConfig

    plain = ROUGE(ROUGEConfig(use_stemmer=False)).compute(gen_(hyps, refs), task_(refs))
    assert plain.value == 0.0
