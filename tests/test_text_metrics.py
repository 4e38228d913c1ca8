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
from dlmbench.metrics.text import (
    BLEU, ROUGE, BLEUConfig, EntropyConfig, ROUGEConfig, UnigramEntropy, _mean_and_stderr, unigram_entropy,
)
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


@pytest.mark.parametrize("skip_empty, expected", [
    (False, {"skipped_empty": 0, "empty": 2}),  # a blank text and an empty token list are samples
    (True, {"skipped_empty": 1, "empty": 1}),  # the blank text is left out; the token list is not text
])
def test_entropy_details_name_its_settings_and_count_the_empty(skip_empty, expected):
    tokens = [[1, 2], [], [1, 1], []]
    generation = gen_(["a b", "", "a a", "x"], tokens=tokens)
    mv = UnigramEntropy(EntropyConfig(skip_empty=skip_empty)).compute(generation, task_())
    settings = {"ids": "model", "span": "continuation", "skip_empty": skip_empty}
    assert {k: mv.details[k] for k in (*settings, *expected)} == {**settings, **expected}
    assert "evaluator" not in mv.details  # the model's own ids: no evaluator involved
    assert mv.n == 4 - expected["skipped_empty"]


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


def test_bleu_details_are_the_hand_counted_corpus_statistics():
    """Corpus BLEU pools n-gram counts over the pairs: (5+3)/(6+3), (3+2)/(5+2), (2+1)/(4+1),
    (1+0)/(3+0), 9 hypothesis vs 10 reference words, and details report each with the full
    signature. Catches a lost or renamed detail and a value taken from the wrong statistic."""
    import sacrebleu

    hyps, refs = ["the cat sat on the mat", "a dog ran"], ["the cat sat on a mat", "a dog ran far"]
    mv = BLEU().compute(gen_(hyps, refs), task_(refs))
    bp = math.exp(1 - 10 / 9)
    assert mv.value == pytest.approx(100 * bp * (8 / 9 * 5 / 7 * 3 / 5 * 1 / 3) ** 0.25, rel=1e-12)
    assert mv.stderr is None and mv.n == 2
    assert mv.details.pop("precisions") == pytest.approx([800 / 9, 500 / 7, 60.0, 100 / 3], rel=1e-12)
    assert mv.details.pop("bp") == pytest.approx(bp, rel=1e-12)
    assert mv.details == {"signature": f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}",
                          "sys_len": 9, "ref_len": 10, "n": 2}


def test_bleu_passes_its_tokenizer_and_effective_order():
    """``tokenize='none'`` keeps "mat." one token (13a splits it off), so only 5/6, 4/5, 3/4,
    2/3 of the n-grams match and 6 vs 7 tokens cost a brevity penalty; a two-word exact
    match has no 3- or 4-grams, so its BLEU is 0 unless orders without n-grams are dropped
    (effective order, ELF's setting). Catches a tokenizer or effective order not passed on."""
    hyp, ref = "the cat sat on the mat.", "the cat sat on the mat ."
    assert BLEU().compute(gen_([hyp], [ref]), task_([ref])).value == pytest.approx(100.0)
    plain = BLEU(BLEUConfig(tokenize="none")).compute(gen_([hyp], [ref]), task_([ref]))
    by_hand = 100 * math.exp(1 - 7 / 6) * (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert plain.value == pytest.approx(by_hand, rel=1e-12) and "tok:none" in plain.details["signature"]
    assert (plain.details["sys_len"], plain.details["ref_len"]) == (6, 7)
    short = "the cat"
    assert BLEU().compute(gen_([short], [short]), task_([short])).value == 0.0
    effective = BLEU(BLEUConfig(use_effective_order=True)).compute(gen_([short], [short]), task_([short]))
    assert effective.value == pytest.approx(100.0)


def test_references_come_from_the_generation_first_then_the_task():
    """A generation's own references win over the task's; without them the task's are used;
    none at all is a config error naming metric and task, and a count mismatch names both
    counts. Catches a swapped or ignored source of references and an anonymous error."""
    hyp = ["the cat sat on the mat"]
    own = BLEU().compute(gen_(hyp, references=hyp), task_(["a dog ran far away"]))
    assert own.value == pytest.approx(100.0)
    from_task = BLEU().compute(gen_(hyp), task_(hyp))
    assert from_task.value == pytest.approx(100.0)
    for metric in (BLEU(), ROUGE()):
        with pytest.raises(ConfigError, match=f"metric '{metric.name}' needs references; task 't' has none"):
            metric.compute(gen_(hyp), task_())
        with pytest.raises(ValueError, match=f"{metric.name}: 2 samples but 1 references"):
            metric.compute(gen_(hyp * 2), task_(hyp))


# --- ROUGE -----------------------------------------------------------------------------
def test_mean_and_stderr_by_the_textbook_formulas():
    """The sample stderr is sqrt(sum (x - mean)^2 / (n - 1) / n), the population one (ELF)
    divides by n instead, so one value has population stderr 0 and sample stderr None;
    no values have neither. Catches the wrong divisor, a lost square or mean, and a
    population stderr for n = 1 or n = 0."""
    values = [1.0, 2.0, 4.0]
    mean = sum(values) / 3
    squares = sum((v - mean) ** 2 for v in values)
    sample, population = _mean_and_stderr(values, "sample"), _mean_and_stderr(values, "population")
    assert sample.value == population.value == pytest.approx(mean, rel=1e-15)
    assert sample.stderr == pytest.approx(math.sqrt(squares / 2 / 3), rel=1e-12)
    assert population.stderr == pytest.approx(math.sqrt(squares / 3 / 3), rel=1e-12)
    assert _mean_and_stderr([5.0], "population").stderr == 0.0
    assert _mean_and_stderr([5.0], "sample").stderr is None
    empty = _mean_and_stderr([], "population")
    assert math.isnan(empty.value) and empty.stderr is None


def test_rouge_population_stderr_and_every_detail():
    """Three pairs worked by hand (F1 x 100): "the cat sat" against "the cat sat on the mat"
    (R1 2/3, R2 4/7, RL 2/3), "cat the sat" against "the cat sat" (every unigram, no bigram,
    LCS 2 of 3) and an exact match. The headline is ROUGE-L, each kind has its mean and
    population stderr, and the settings are recorded. Catches a scale or kind mix-up, the
    stderr option not passed on, and a lost or renamed detail."""
    refs = ["the cat sat on the mat", "the cat sat", "a dog ran"]
    hyps = ["the cat sat", "cat the sat", "a dog ran"]
    per = {"rouge1": [200 / 3, 100.0, 100.0], "rouge2": [400 / 7, 0.0, 100.0], "rougeL": [200 / 3, 200 / 3, 100.0]}
    mv = ROUGE(ROUGEConfig(stderr="population")).compute(gen_(hyps, refs), task_(refs))
    expected = {"n": 3, "use_stemmer": True, "stderr": "population"}
    for kind, xs in per.items():
        mean = sum(xs) / 3
        expected[kind] = pytest.approx(mean, rel=1e-12)
        expected[f"{kind}_stderr"] = pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in xs) / 3 / 3), rel=1e-12)
    assert mv.details == expected
    assert mv.value == pytest.approx(sum(per["rougeL"]) / 3, rel=1e-12) and mv.n == 3
    assert mv.stderr == expected["rougeL_stderr"]
    assert not ROUGE().applies_to(task_()) and ROUGE().applies_to(task_(["x"]))


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
    plain = ROUGE(ROUGEConfig(use_stemmer=False)).compute(gen_(hyps, refs), task_(refs))
    assert plain.value == 0.0
