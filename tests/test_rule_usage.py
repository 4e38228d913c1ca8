"""Rule usage (inside-outside by autograd) and ``rule-kl`` against brute-force enumeration
and the closed form of expected rule counts."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from dlmbench.data import Generation
from dlmbench.metrics.oracle import RuleKL, RuleKLConfig
from dlmbench.tasks import english
from dlmbench.tasks.pcfg import PCFG, GrammarOracle
from dlmbench.tasks.rule_usage import RuleUsage, usage_kl

from test_pcfg import AMBIGUOUS, MAX_LEN


def derivations(grammar: PCFG, symbol: str, budget: int):
    """Every derivation of ``symbol`` with at most ``budget`` words: ``(words, log_prob,
    {rule index: uses})``. Needs no empty rules and no unary cycles."""
    rules = [(i, r) for i, r in enumerate(grammar.rules) if r.lhs == symbol]
    if not rules:
        yield (symbol,), 0.0, {}
        return

    def expand(rhs, budget):
        if not rhs:
            yield (), 0.0, {}
            return
        for head, lp, uses in derivations(grammar, rhs[0], budget - (len(rhs) - 1)):
            for rest, lp2, uses2 in expand(rhs[1:], budget - len(head)):
                merged = dict(uses)
                for k, v in uses2.items():
                    merged[k] = merged.get(k, 0) + v
                yield head + rest, lp + lp2, merged

    for index, r in rules:
        if len(r.rhs) <= budget:
            for words, lp, uses in expand(r.rhs, budget):
                yield words, lp + math.log(r.prob), {**uses, index: uses.get(index, 0) + 1}


@pytest.fixture(scope="module")
def ambiguous():
    return PCFG.from_string(AMBIGUOUS)


@pytest.fixture(scope="module")
def brute(ambiguous):
    """Exact E[counts | len <= MAX_LEN] and, per sentence, its mass and E[counts | sentence]."""
    size = len(ambiguous.rules)
    total, expected = 0.0, np.zeros(size)
    mass: dict[tuple[str, ...], float] = defaultdict(float)
    weighted: dict[tuple[str, ...], np.ndarray] = defaultdict(lambda: np.zeros(size))
    for words, lp, uses in derivations(ambiguous, "S", MAX_LEN):
        p = math.exp(lp)
        total += p
        mass[words] += p
        for k, v in uses.items():
            expected[k] += p * v
            weighted[words][k] += p * v
    return expected / total, {w: weighted[w] / mass[w] for w in mass}


def test_expected_usage_equals_enumeration(ambiguous, brute):
    expected, _ = brute
    np.testing.assert_allclose(RuleUsage(ambiguous).expected(MAX_LEN), expected, rtol=1e-10, atol=1e-13)


def test_posterior_usage_sums_over_every_parse(ambiguous, brute):
    _, posterior = brute
    usage = RuleUsage(ambiguous)
    assert len(posterior) > 100
    for words, counts in posterior.items():
        np.testing.assert_allclose(usage.posterior(words), counts, rtol=1e-9, atol=1e-12)
    # "a a a" has many parses: the counts are fractional, not those of one parse
    assert not np.allclose(usage.posterior(("a", "a", "a")) % 1.0, 0.0)


def closed_form_usage(grammar: PCFG) -> np.ndarray:
    """Unconditioned ``E[c_r] = p_r * E[expansions of lhs(r)]``, the expansions counted by
    ``(I - M)^-1`` of the mean-offspring matrix (a branching-process identity)."""
    names = list(grammar.nonterminals)
    idx = {a: i for i, a in enumerate(names)}
    mean = np.zeros((len(names), len(names)))
    for r in grammar.rules:
        for s in r.rhs:
            if s in idx:
                mean[idx[r.lhs], idx[s]] += r.prob
    visits = np.linalg.inv(np.eye(len(names)) - mean)[idx[grammar.start]]
    return np.array([r.prob * visits[idx[r.lhs]] for r in grammar.rules])


@pytest.mark.parametrize("rules", [
    AMBIGUOUS,
    "S -> T 0.3\nS -> a 0.4\nS -> b S 0.3\nT -> S 0.6\nT -> a a 0.4",  # a unary cycle S -> T -> S
])
def test_usage_without_a_length_cap_is_the_closed_form(rules):
    grammar = PCFG.from_string(rules)
    assert grammar.length_distribution(200).sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(RuleUsage(grammar).expected(200), closed_form_usage(grammar), rtol=1e-7)


def test_the_length_cap_changes_the_reference():
    grammar = english.english_grammar()
    capped = RuleUsage(grammar).expected(15)
    assert np.abs(capped - closed_form_usage(grammar)).max() > 0.05


def test_not_a_sentence_is_refused(ambiguous):
    with pytest.raises(ValueError, match="not a sentence"):
        RuleUsage(ambiguous).posterior(("a", "c"))


def test_usage_kl_by_hand():
    p = np.array([1.0, 1.0, 2.0])  # normalised: 1/4, 1/4, 1/2
    samples = [np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])]  # q = 2/3, 0, 1/3
    expected = 2 / 3 * math.log((2 / 3) / 0.25) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert usage_kl(samples, p) == pytest.approx(expected, rel=1e-12)
    assert usage_kl([p], p) == 0.0


# the metric on a task ---------------------------------------------------------------------
class _Tokenizer:
    """Word ids for the metric's decoding: id 0 is EOS."""

    def __init__(self, words):
        self.vocab = ["[EOS]"] + sorted(words)
        self.backend = self
        self.vocab_size = len(self.vocab)

    def id_to_token(self, i):
        return self.vocab[i]


class _Spec:
    conditional, prefix_len, eos_id = False, 0, 0


class _Task:
    def __init__(self, grammar, max_len):
        self.oracle = GrammarOracle(grammar, max_len)
        self.tokenizer = _Tokenizer(grammar.terminals)
        self.spec = _Spec()


def kl_by_hand(counts, expected):
    """``sum_r q_r log(q_r / p_r)`` over the rules the samples use, both sides normalised."""
    q, p = counts / counts.sum(), expected / expected.sum()
    return float(sum(qi * math.log(qi / pi) for qi, pi in zip(q, p) if qi > 0))


def _generation(task, sentences, width):
    index = {w: i for i, w in enumerate(task.tokenizer.vocab)}
    rows = [[index[w] for w in s] + [0] * (width - len(s)) for s in sentences]
    return Generation(ids=torch.tensor(rows), tokens=[[index[w] for w in s] for s in sentences],
                      texts=[" ".join(s) for s in sentences])


def test_rule_kl_is_the_kl_of_the_enumerated_posteriors(ambiguous, brute):
    expected, posterior = brute
    task = _Task(ambiguous, MAX_LEN)
    sentences = [("a",), ("a", "b"), ("a", "a", "b"), ("a",), ("b", "a", "b")]
    sentences = [s for s in sentences if s in posterior]
    assert len(sentences) == 5
    by_hand = kl_by_hand(sum(posterior[s] for s in sentences), expected)
    # the last sample never ends (no EOS in its window): not a sentence, not counted
    value = RuleKL().compute(_generation(task, sentences + [("a",) * (MAX_LEN + 1)], MAX_LEN + 1), task)
    assert value.value == pytest.approx(by_hand, rel=1e-9)
    assert value.details["accepted"] == 5 and value.details["samples"] == 6 and value.details["n"] == 5


def test_rule_kl_separates_the_data_from_a_collapsed_model():
    grammar = english.english_grammar()
    task = _Task(grammar, 15)
    rng = np.random.default_rng(0)
    data = [tuple(s) for s in (next(grammar.iter_sentences(rng)) for _ in range(400)) if len(s) <= 15]
    data = data[:256]
    fair = RuleKL().compute(_generation(task, data, 16), task)
    collapsed = RuleKL().compute(_generation(task, data[:8] * 32, 16), task)  # 8 distinct sentences
    assert fair.value < 0.2 and fair.stderr is not None
    assert collapsed.value > 3 * fair.value
    assert collapsed.value - fair.value > 3 * (collapsed.stderr + fair.stderr)
    none = RuleKL().compute(_generation(task, [("dog", "the")], 16), task)
    assert math.isnan(none.value) and none.n == 0 and "0 of 1 accepted" in none.undefined


def bootstrap_by_hand(counts, expected, resamples):
    """The rule-kl bootstrap written out: ``resamples`` draws of n samples with replacement
    (numpy's generator seeded 0, so the number is reproducible), the KL of each draw, and
    the sample standard deviation (n - 1) of those KLs."""
    rng = np.random.default_rng(0)
    kls = []
    for _ in range(resamples):
        pick = rng.integers(0, len(counts), len(counts))
        kls.append(kl_by_hand(sum(counts[i] for i in pick), expected))
    mean = sum(kls) / resamples
    return math.sqrt(sum((k - mean) ** 2 for k in kls) / (resamples - 1))


def test_rule_kl_counts_only_sentences_within_the_cap_and_bootstraps_its_stderr(ambiguous, brute):
    """Only ended sentences of the grammar within the length cap are counted (an empty
    sentence, a word outside the grammar and a sentence one word too long are not), the
    value is the KL of their enumerated posteriors, the stderr the seeded bootstrap's spread,
    and details say what it rests on. Catches counting a rejected sample, a bootstrap with
    another seed, draw range or ddof, and a renamed or miscounted detail."""
    expected, posterior = brute
    task = _Task(ambiguous, MAX_LEN)
    task.tokenizer = _Tokenizer(list(ambiguous.terminals) + ["c"])  # "c": not in the grammar
    rejected = [(), ("a", "c"), ("a",) * (MAX_LEN + 1)]
    assert ambiguous.accepts(rejected[2])  # a sentence, but longer than the task keeps
    kept = [("a", "b"), ("b",), ("a", "a", "b"), ("b", "a", "b", "a"), ("a",)]
    gen = _generation(task, rejected + kept, MAX_LEN + 2)
    counts = [posterior[s] for s in kept]
    value = RuleKL(RuleKLConfig(bootstrap=40)).compute(gen, task)
    assert value.value == pytest.approx(kl_by_hand(sum(counts), expected), rel=1e-9)
    assert value.stderr == pytest.approx(bootstrap_by_hand(counts, expected, 40), rel=1e-9)
    assert value.n == 5 and value.undefined is None
    assert value.details == {"samples": 8, "accepted": 5, "rules": len(ambiguous.rules),
                             "max_words": MAX_LEN, "n": 5}
    # no resamples: no stderr; two samples: a bootstrap of two
    plain = RuleKL(RuleKLConfig(bootstrap=0)).compute(gen, task)
    assert plain.stderr is None and plain.value == value.value
    two = RuleKL(RuleKLConfig(bootstrap=40)).compute(_generation(task, kept[:2], MAX_LEN + 2), task)
    assert two.stderr == pytest.approx(bootstrap_by_hand(counts[:2], expected, 40), rel=1e-9)


def test_rule_kl_of_one_or_no_sentence(ambiguous, brute):
    """One accepted sentence has a value but no stderr (a bootstrap of one sample has no
    spread to estimate); none is NaN with n = 0, the reason and the same details; a
    conditional task is refused by name. Catches a stderr for n = 1, a changed empty-case
    value, count, reason or detail, and an anonymous refusal."""
    expected, posterior = brute
    task = _Task(ambiguous, MAX_LEN)
    one = RuleKL().compute(_generation(task, [("a", "b"), ()], 3), task)
    assert one.value == pytest.approx(kl_by_hand(posterior[("a", "b")], expected), rel=1e-9)
    assert one.stderr is None and one.n == 1
    none = RuleKL().compute(_generation(task, [(), ()], 3), task)
    assert math.isnan(none.value) and none.stderr is None and none.n == 0
    assert none.undefined == "no grammatical sample (0 of 2 accepted)"
    assert none.details == {"samples": 2, "accepted": 0, "rules": len(ambiguous.rules),
                            "max_words": MAX_LEN, "n": 0}
    task.spec = type("Conditional", (_Spec,), {"conditional": True})()
    assert not RuleKL().applies_to(task)
    with pytest.raises(AssertionError, match="rule-kl needs the"):
        RuleKL().compute(_generation(task, [("a",)], 2), task)
