"""The English-like grammar, its transforms, the grammar tasks and their exact metrics."""

from __future__ import annotations

import math
import types

import numpy as np
import pydantic
import pytest
import torch

from dlmbench.data import Generation
from dlmbench.errors import ConfigError
from dlmbench.metrics import oracle as oracle_metrics
from dlmbench.metrics.oracle import ExactMatch, GrammarAccept, OracleNLL, OracleNLLAll, RuleKL
from dlmbench.tasks import english, synthetic
from dlmbench.tasks.pcfg import GrammarOracle, Tree
from dlmbench.tasks.synthetic import GrammarSummarizeTask, GrammarTask, GrammarTranslateTask


@pytest.fixture(scope="module")
def grammar():
    return english.english_grammar()


@pytest.fixture(scope="module")
def trees(grammar):
    return grammar.sample_trees(np.random.default_rng(123), 1500)


def generation_from_rows(rows: torch.Tensor, task) -> Generation:
    """What the runner would hand a metric for these raw sequences."""
    tok = task.tokenizer
    tokens = [tok.cut_at_eos(r[task.spec.prefix_len :].tolist()) for r in rows]
    return Generation(ids=rows, tokens=tokens, texts=[tok.decode(t) for t in tokens])


# the grammar -----------------------------------------------------------------------------
def test_grammar_statistics(grammar):
    assert 300 <= len(english.vocabulary()) <= 600
    assert grammar.terminals == set(english.vocabulary())
    assert 8 <= grammar.expected_length() <= 12
    assert 1 - GrammarOracle(grammar, 31).p_fit < 1e-3  # seq_len 32 rarely rejects


def test_grammar_is_unambiguous_on_samples(grammar, trees):
    # one parse per sentence: the inside probability is the sampled tree's probability,
    # which is what makes derivation entropy the true entropy rate
    for t in trees[:400]:
        assert grammar.log_prob(tuple(t.words())) == pytest.approx(grammar.tree_log_prob(t), abs=1e-9)


@pytest.mark.parametrize(
    "sentence",
    [
        "the dog sleeps",
        "dogs sleep",
        "the dogs are happy",
        "a big black cat that chases the mice often sleeps after two boats",
        "the man who sees a dog carries the box on the table",
        "every table that is broken falls",
    ],
)
def test_accepts_grammatical_sentences(grammar, sentence):
    assert grammar.accepts(sentence.split())


@pytest.mark.parametrize(
    "sentence",
    [
        "the dog sleep",  # subject-verb agreement
        "the dogs sleeps",
        "a dogs sleep",  # determiner-noun agreement
        "these dog sleeps",
        "the dogs is happy",  # copula agreement
        "the dog that chase the cat sleeps",  # agreement inside the relative clause
        "the table who falls sleeps",  # "who" needs an animate noun
        "dog the sleeps",  # word order
        "the dog sleeps quickly",  # adverbs precede the verb
        "the dog sleeps the",
        "the dog sleeps [EOS]",
    ],
)
def test_rejects_ungrammatical_sentences(grammar, sentence):
    assert not grammar.accepts(sentence.split())


def test_inside_is_fast_enough(grammar, trees):
    import time

    sentences = [tuple(t.words()) + ("the",) for t in trees[400:500]]  # uncached
    rng = np.random.default_rng(0)
    junk = [tuple(rng.choice(english.vocabulary(), 31)) for _ in range(100)]
    shuffled = [tuple(rng.permutation(t.words())) for t in trees[500:600]]
    for batch in (sentences, junk, shuffled):
        t0 = time.perf_counter()
        for s in batch:
            grammar.log_prob(s)
        assert time.perf_counter() - t0 < 1.0  # typically 0.01-0.05 s per hundred


# transforms ------------------------------------------------------------------------------
def leaf(label: str, word: str) -> Tree:
    return Tree(label, (word,))


def np_sg(det: str, noun: str, *rest: Tree, anim: str = "a", adj: str | None = None) -> Tree:
    nb_kids = ((Tree("AdjP", (leaf("Adj", adj),)),) if adj else ()) + (leaf(f"N_sg_{anim}", noun),)
    return Tree("NP_sg", (leaf("Det_sg", det), Tree(f"NB_sg_{anim}", nb_kids)) + rest)


@pytest.fixture(scope="module")
def worked_tree():
    """"the big dog who chases a cat often sleeps after boats", built by hand."""
    rc = Tree("RC_sg_a", ("who", Tree("VC_sg", (leaf("Vtr_sg", "chases"), Tree("NPo", (np_sg("a", "cat"),))))))
    subject = np_sg("the", "dog", rc, adj="big")
    boats = Tree("NPs", (Tree("NPs_pl", (Tree("NB_pl_i", (leaf("N_pl_i", "boats"),)),)),))
    vp = Tree(
        "VP_sg",
        (
            Tree("VC_sg", (leaf("Adv", "often"), leaf("Vin_sg", "sleeps"))),
            Tree("PPvp", (leaf("Pvp", "after"), boats)),
        ),
    )
    return Tree("S", (subject, vp))


def test_worked_example_is_a_derivation(grammar, worked_tree):
    words = worked_tree.words()
    assert " ".join(words) == "the big dog who chases a cat often sleeps after boats"
    assert grammar.tree_log_prob(worked_tree) > -math.inf
    assert grammar.log_prob(tuple(words)) == pytest.approx(grammar.tree_log_prob(worked_tree))


def test_summary_keeps_the_core_clause(worked_tree):
    assert english.summarize(worked_tree) == "the dog sleeps".split()
    cop = Tree("S", (Tree("NP_pl", (leaf("Det_pl", "the"), Tree("NB_pl_a", (leaf("N_pl_a", "dogs"),)))),
                     Tree("VP_pl", (Tree("VC_pl", (leaf("Cop_pl", "are"), leaf("Adj", "happy"))),))))
    assert english.summarize(cop) == "the dogs are happy".split()  # predicate stays


def test_translation_reorders_then_maps_words(worked_tree):
    lex = english.target_lexicon()
    # noun before adjective, object before verb, adverbial PP first, postpositions
    order = "the dog big who a cat chases boats after often sleeps".split()
    assert english.translate(worked_tree) == [lex[w] for w in order]


def test_target_lexicon_is_a_bijection_into_new_words():
    lex = english.target_lexicon()
    assert set(lex) == set(english.vocabulary())
    assert len(set(lex.values())) == len(lex)
    assert not set(lex.values()) & set(english.vocabulary())
    assert lex == english.target_lexicon.__wrapped__()  # deterministic


def test_summaries_are_grammatical_and_translations_permute(grammar, trees):
    inverse = {v: k for k, v in english.target_lexicon().items()}
    shorter = 0
    for t in trees[:300]:
        words = t.words()
        summary = english.summarize(t)
        assert grammar.accepts(summary)
        shorter += len(summary) < len(words)
        assert sorted(inverse[w] for w in english.translate(t)) == sorted(words)
    assert shorter > 100


# the tasks -------------------------------------------------------------------------------
def small(cls, **kw):
    return cls(cls.Config(train_sentences=kw.pop("train", 300), valid_sentences=kw.pop("valid", 100), **kw))


def test_unconditional_layout(grammar):
    task = small(GrammarTask).load(seq_len=16, num_eval=0, seed=0)
    spec, tok = task.spec, task.tokenizer
    assert task.train.shape == (300, 16) and task.valid.shape == (100, 16)
    assert task.train.dtype == torch.int64
    assert spec.prefix_len == 0 and not spec.conditional
    assert (spec.vocab_size, spec.eos_id, spec.mask_id, spec.pad_id) == (tok.vocab_size, 3, 4, 0)
    assert task.eval_prefixes is None and task.references is None
    assert isinstance(task.oracle, GrammarOracle) and task.oracle.max_len == 15
    for row in task.train.tolist():
        n = row.index(3)  # at least one EOS ...
        assert all(i == 3 for i in row[n:])  # ... and only EOS after it
        assert task.oracle.accepts(tok.decode(row[:n]).split())
    assert task.info["entropy_rate_nats"] == pytest.approx(task.oracle.entropy_rate())


def test_corpus_is_deterministic_by_seed():
    synthetic._sentences.cache_clear()
    a = small(GrammarTask).load(seq_len=24, num_eval=0, seed=5)
    synthetic._sentences.cache_clear()
    b = small(GrammarTask).load(seq_len=24, num_eval=0, seed=5)
    c = small(GrammarTask).load(seq_len=24, num_eval=0, seed=6)
    assert torch.equal(a.train, b.train) and torch.equal(a.valid, b.valid)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:100], a.valid)  # splits use different streams


def test_too_short_sequences_are_a_config_error():
    with pytest.raises(ConfigError, match="seq_len"):
        GrammarTask().load(seq_len=4, num_eval=0, seed=0)
    with pytest.raises(ConfigError, match="seq_len"):
        GrammarSummarizeTask().load(seq_len=8, num_eval=4, seed=0)
    with pytest.raises(pydantic.ValidationError):
        GrammarTask.Config(train_sentence=3)


@pytest.mark.parametrize("cls", [GrammarTranslateTask, GrammarSummarizeTask])
def test_conditional_layout(cls):
    seq_len, num_eval = 33, 40
    task = small(cls).load(seq_len=seq_len, num_eval=num_eval, seed=1)
    spec, tok = task.spec, task.tokenizer
    assert spec.prefix_len == 16 and spec.conditional
    assert task.train.shape == (300, seq_len) and task.eval_prefixes.shape == (num_eval, 16)
    assert len(task.references) == len(task.sources) == num_eval
    assert isinstance(task.oracle, synthetic.TransductionOracle)
    inverse = {v: k for k, v in english.target_lexicon().items()}
    for row in task.train.tolist():
        src, tgt = row[:16], row[16:]
        assert src[-1] == 3 and tgt[-1] == 3  # both sides end in EOS padding
        src_words = tok.decode(tok.cut_at_eos(src)).split()
        tgt_words = tok.decode(tok.cut_at_eos(tgt)).split()
        assert all(i == 3 for i in src[len(src_words) :])
        if cls is GrammarTranslateTask:
            assert sorted(inverse[w] for w in tgt_words) == sorted(src_words)
        else:
            it = iter(src_words)
            assert all(w in it for w in tgt_words)  # a subsequence of the source
    train_sources = {tok.decode(tok.cut_at_eos(r[:16])) for r in task.train.tolist()}
    for prefix, source in zip(task.eval_prefixes.tolist(), task.sources):
        assert tok.decode(tok.cut_at_eos(prefix)) == source
    assert len(set(task.sources)) == num_eval and not set(task.sources) & train_sources


# the metrics -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped_task():
    """seq_len 16: about 5% of the grammar is too long, so the length correction matters."""
    return small(GrammarTask, train=10, valid=2500).load(seq_len=16, num_eval=0, seed=3)


def test_oracle_nll_of_data_is_the_entropy_rate(capped_task):
    oracle = capped_task.oracle
    assert 0.02 < 1 - oracle.p_fit < 0.2
    gen = generation_from_rows(capped_task.valid, capped_task)
    value = OracleNLL().compute(gen, capped_task)
    assert value.details["accepted"] == 2500
    assert abs(value.value - oracle.entropy_rate()) < 4 * value.stderr
    assert value.stderr < 0.05
    per_sentence = value.details["nll_per_sentence"]
    assert abs(per_sentence - oracle.entropy()) < 4 * value.details["nll_per_sentence_stderr"]
    assert GrammarAccept().compute(gen, capped_task).value == 1.0


def test_metrics_on_crafted_samples(capped_task):
    task, tok = capped_task, capped_task.tokenizer
    oracle = task.oracle

    def row(text: str, eos: bool = True) -> list[int]:
        ids = tok.encode(text) if text else []
        pad = [3] if eos else [tok.encode("the")[0]]
        return (ids + pad * 16)[:16]

    texts = [
        "the dog sleeps",  # fine
        "dogs chase the cats",  # fine
        "the dog sleep",  # agreement violation
        "",  # empty sentence
        "the dog sleeps",  # never ends: no EOS anywhere
    ]
    rows = torch.tensor([row(t, eos=i != 4) for i, t in enumerate(texts)])
    rows[0, 5:8] = torch.tensor(tok.encode("cats the a"))  # junk after the first EOS is ignored
    gen = generation_from_rows(rows, task)
    acc = GrammarAccept().compute(gen, task)
    assert acc.value == pytest.approx(2 / 5) and acc.details["no_eos"] == 1
    nll = OracleNLL().compute(gen, task)
    a, b = oracle.nll("the dog sleeps".split()), oracle.nll("dogs chase the cats".split())
    assert nll.value == pytest.approx((a + b) / (4 + 5))
    assert nll.details["accepted"] == 2 and nll.details["nll_per_sentence"] == pytest.approx((a + b) / 2)
    assert a == pytest.approx(-english.english_grammar().log_prob(("the", "dog", "sleeps")) + oracle.log_p_fit)


def test_oracle_nll_all_scores_every_sample_by_hand(capped_task):
    task, tok = capped_task, capped_task.tokenizer
    oracle, log_v, b = capped_task.oracle, math.log(tok.vocab_size), 0.01
    eos, the = 3, tok.encode("the")[0]
    rows = torch.tensor([
        (tok.encode("the dog sleeps") + [eos] * 16)[:16],  # a sentence: 3 words + EOS
        (tok.encode("the dog sleep") + [eos] * 16)[:16],  # ends, but not a sentence
        [the] * 16,  # never ends: 16 tokens, no EOS
    ])
    value = OracleNLLAll().compute(generation_from_rows(rows, task), task)
    fine = -math.log((1 - b) * math.exp(oracle.log_prob("the dog sleeps".split())) + b * math.exp(-4 * log_v))
    wrong = -math.log(b) + 4 * log_v
    endless = -math.log(b) + 16 * log_v
    assert value.value == pytest.approx((fine + wrong + endless) / (4 + 4 + 16), rel=1e-12)
    assert value.n == 3 and value.details["accepted"] == 1 and value.stderr is not None
    # the accepted-only NLL rests on one sample, and says so; with none it is undefined, with why
    assert OracleNLL().compute(generation_from_rows(rows, task), task).details["n"] == 1
    none = OracleNLL().compute(generation_from_rows(rows[1:], task), task)
    assert math.isnan(none.value) and none.n == 0 and none.undefined == "no grammatical sample (0 of 2 accepted)"


def test_oracle_nll_skips_every_rejected_sample_and_pools_by_the_delta_method(capped_task):
    """Rejected samples (ungrammatical, empty, never ending) are skipped wherever they sit,
    the value is the pooled NLL per token (words + EOS) of the accepted ones, its stderr the
    delta-method one of a ratio of sums, and details name each count. Catches stopping at
    the first rejected sample, another token count, a lost or renamed detail, and a stderr
    that is not the ratio's."""
    task, tok = capped_task, capped_task.tokenizer
    grammar, log_p_fit = english.english_grammar(), task.oracle.log_p_fit
    eos, the = 3, tok.encode("the")[0]
    texts = ["the dog sleep", "the dog sleeps", "", "dogs chase the cats", "the cats sleep",
             "a cat sees the dog"]
    rows = torch.tensor([(tok.encode(t) if t else []) + [eos] * (16 - len(t.split())) for t in texts]
                        + [[the] * 16])  # the last sample never ends
    accepted = [texts[i].split() for i in (1, 3, 4, 5)]
    nll = [-grammar.log_prob(tuple(w)) + log_p_fit for w in accepted]
    tokens = [len(w) + 1 for w in accepted]
    n, ratio = len(nll), sum(nll) / sum(tokens)
    resid = [a - ratio * b for a, b in zip(nll, tokens)]
    delta = math.sqrt(sum(r * r for r in resid) / (n - 1) / n) / (sum(tokens) / n)
    mean = sum(nll) / n
    value = OracleNLL().compute(generation_from_rows(rows, task), task)
    assert value.value == pytest.approx(ratio, rel=1e-12) and value.n == 4
    assert value.stderr == pytest.approx(delta, rel=1e-9)
    assert value.details.pop("nll_per_sentence") == pytest.approx(mean, rel=1e-12)
    assert value.details.pop("nll_per_sentence_stderr") == pytest.approx(
        math.sqrt(sum((a - mean) ** 2 for a in nll) / (n - 1) / n), rel=1e-9)
    assert value.details == {"samples": 7, "accepted": 4, "max_words": task.oracle.max_len, "n": 4,
                             "tokens": sum(tokens)}


def test_ratio_stderr_at_two_and_three_samples_is_the_delta_method():
    """Delta method for ``R = sum(a) / sum(b)``: ``se = sqrt(s_r^2 / n) / mean(b)`` with
    residuals ``r_i = a_i - R b_i`` and ``s_r^2 = sum r_i^2 / (n - 1)``; defined from n = 2.
    Hand-worked: a = (2, 3), b = (1, 2): R = 5/3, r = (1/3, -1/3), s_r^2 = 2/9,
    se = sqrt(1/9) / 1.5 = 2/9; a = (1, 2, 6), b = (1, 2, 3): R = 3/2, r = (-1/2, -1, 3/2),
    s_r^2 = 7/4, se = sqrt(7/12) / 2; with b = 1 it is the mean's stderr, (1, 3) -> 1.
    Catches a stderr withheld at n = 2 or 3."""
    stderr = oracle_metrics._ratio_stderr
    assert stderr([2.0], [1.0]) is None
    assert stderr([2.0, 3.0], [1.0, 2.0]) == pytest.approx(2 / 9, rel=1e-12)
    assert stderr([1.0, 3.0], [1.0, 1.0]) == pytest.approx(1.0, rel=1e-12)
    assert stderr([1.0, 2.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(math.sqrt(7 / 12) / 2, rel=1e-12)


def test_oracle_nll_of_no_grammatical_sample_is_undefined_and_says_why(capped_task):
    """No accepted sample: NaN, no stderr, n = 0, the reason, and the same details; a task
    without a grammar is refused by name. Catches a changed value, count, reason or detail
    of the empty case, and an anonymous refusal."""
    tok = capped_task.tokenizer
    rows = torch.tensor([(tok.encode("the dog sleep") + [3] * 16)[:16], [3] * 16])
    value = OracleNLL().compute(generation_from_rows(rows, capped_task), capped_task)
    assert math.isnan(value.value) and value.stderr is None and value.n == 0
    assert value.undefined == "no grammatical sample (0 of 2 accepted)"
    assert value.details == {"samples": 2, "accepted": 0, "max_words": capped_task.oracle.max_len, "n": 0}
    translate = small(GrammarTranslateTask).load(seq_len=24, num_eval=4, seed=0)
    with pytest.raises(AssertionError, match="oracle-nll needs the"):
        OracleNLL().compute(generation_from_rows(rows, capped_task), translate)


def test_grammar_accept_details_and_refusal(capped_task):
    """grammar-accept reports how many samples never ended and the length cap it judged
    with; a task without a grammar is refused by name. Catches a lost or emptied detail and
    an anonymous refusal."""
    tok = capped_task.tokenizer
    rows = torch.tensor([(tok.encode("the dog sleeps") + [3] * 16)[:16], [tok.encode("the")[0]] * 16])
    value = GrammarAccept().compute(generation_from_rows(rows, capped_task), capped_task)
    assert value.value == 0.5 and value.details == {"n": 2, "no_eos": 1, "max_words": capped_task.oracle.max_len}
    translate = small(GrammarTranslateTask).load(seq_len=24, num_eval=4, seed=0)
    with pytest.raises(AssertionError, match="grammar-accept needs the"):
        GrammarAccept().compute(generation_from_rows(rows, capped_task), translate)


def test_data_scores_near_the_entropy_rate_on_every_quality_metric(capped_task):
    gen = generation_from_rows(capped_task.valid[:1000], capped_task)
    rate = capped_task.oracle.entropy_rate()
    smoothed = OracleNLLAll().compute(gen, capped_task)
    # the backoff costs at most -log(1 - b) per sentence on grammatical data
    assert abs(smoothed.value - rate) < 4 * smoothed.stderr + math.log(1 / 0.99)
    assert RuleKL().compute(gen, capped_task).value < 0.1


def test_every_grammar_metric_says_how_many_samples_it_rests_on(capped_task):
    from dlmbench.metrics.text import UnigramEntropy

    rows = capped_task.valid[:40].clone()
    rows[:10] = capped_task.tokenizer.encode("the")[0]  # 10 samples that never end
    gen = generation_from_rows(rows, capped_task)
    n = {cls.name: cls().compute(gen, capped_task).n
         for cls in (OracleNLL, OracleNLLAll, GrammarAccept, RuleKL, UnigramEntropy)}
    assert n == {"oracle-nll": 30, "oracle-nll-all": 40, "grammar-accept": 40, "rule-kl": 30,
                 "unigram-entropy": 40}


def test_exact_match():
    gen = Generation(ids=torch.zeros(3, 4, dtype=torch.long), tokens=[[], [], []],
                     texts=["a b", "a  b c", "x"], references=["a b", "a b c", "y"])
    value = ExactMatch().compute(gen, None)
    assert value.value == pytest.approx(2 / 3) and value.details["n"] == 3


def test_exact_match_falls_back_to_the_tasks_references_and_refuses_unpaired_ones():
    """A generation without its own references is scored against the task's; a count that
    does not pair one reference with each sample raises, saying both counts. Catches ignoring
    the task's references, letting ``zip`` silently drop the unpaired samples, and a message
    that loses a count."""
    task = types.SimpleNamespace(references=["a b", "c"])
    gen = Generation(ids=torch.zeros(2, 4, dtype=torch.long), tokens=[[], []], texts=["a b", "d"])
    assert ExactMatch().compute(gen, task).value == pytest.approx(1 / 2)
    three = Generation(ids=torch.zeros(3, 4, dtype=torch.long), tokens=[[], [], []], texts=["a b", "c", "e"])
    with pytest.raises(ValueError, match="one reference per sample: 3 samples, 2 references"):
        ExactMatch().compute(three, task)
    with pytest.raises(ValueError, match="3 samples, None references"):
        ExactMatch().compute(three, types.SimpleNamespace(references=None))


def test_oracle_nll_all_of_no_samples_is_undefined_and_says_why(capped_task):
    """With no samples the smoothed NLL is NaN with no stderr, rests on n = 0 samples and
    carries its settings; a task without a grammar is refused by name. Catches a changed
    value, count, reason or detail of the empty case, and an anonymous refusal."""
    empty = Generation(ids=torch.zeros(0, 16, dtype=torch.long), tokens=[], texts=[])
    value = OracleNLLAll().compute(empty, capped_task)
    assert math.isnan(value.value) and value.stderr is None and value.n == 0 and value.undefined == "no samples"
    assert value.details == {"samples": 0, "accepted": 0, "max_words": capped_task.oracle.max_len,
                             "vocab_size": capped_task.tokenizer.vocab_size, "backoff": 0.01, "n": 0}
    translate = small(GrammarTranslateTask).load(seq_len=24, num_eval=4, seed=0)
    with pytest.raises(AssertionError, match="oracle-nll-all needs"):
        OracleNLLAll().compute(empty, translate)


def test_metrics_apply_only_where_they_can(capped_task):
    translate = small(GrammarTranslateTask).load(seq_len=24, num_eval=4, seed=0)
    for metric in (OracleNLL(), OracleNLLAll(), GrammarAccept(), RuleKL()):
        assert metric.applies_to(capped_task) and not metric.applies_to(translate)
    assert ExactMatch().applies_to(translate) and not ExactMatch().applies_to(capped_task)


def test_plugins_register_tasks_and_metrics():
    tasks, metrics = [], []
    synthetic.register_tasks(register=tasks.append)
    oracle_metrics.register_metrics(register=metrics.append)
    assert {t.name: t.default_metrics for t in tasks} == {
        "grammar": ("oracle-nll-all", "oracle-nll", "grammar-accept", "rule-kl", "unigram-entropy"),
        "grammar-translate": ("exact-match", "bleu", "rouge"),
        "grammar-summarize": ("exact-match", "bleu", "rouge"),
    }
    assert {m.name: m.higher_is_better for m in metrics} == {
        "oracle-nll": False, "oracle-nll-all": False, "grammar-accept": True, "rule-kl": False,
        "exact-match": True,
    }
    assert all(m.description for m in metrics)
