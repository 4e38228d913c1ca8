"""The generic PCFG against brute-force enumeration of derivations and Monte Carlo."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from dlmbench.tasks.pcfg import PCFG, GrammarOracle, Tree

# Ambiguous on purpose: "a" alone has several parses (S -> a, S -> C -> A -> a), S -> S S
# brackets freely, and it mixes words into long rules and chains unary rules.
AMBIGUOUS = """
S -> S S 0.2
S -> A B 0.25
S -> a 0.3
S -> C 0.15
S -> a C b a 0.1
C -> b 0.5
C -> a C b 0.3
C -> A 0.2
A -> a 0.6
A -> A a 0.4
B -> b 0.7
B -> S b 0.3
"""

# Unambiguous: PPs attach only to noun phrases and branch only to the right.
UNAMBIGUOUS = """
S -> NP VP 1.0
NP -> d N 0.7
NP -> d N PP 0.3
PP -> p NP 1.0
VP -> v 0.5
VP -> v NP 0.5
N -> n 0.6
N -> m 0.4
"""

MAX_LEN = 6


def enumerate_derivations(grammar: PCFG, symbol: str, max_len: int):
    """Every derivation of ``symbol`` with at most ``max_len`` words, one at a time:
    ``(words, log_prob)``. Needs no empty rules and no unary cycles."""
    rules = [r for r in grammar.rules if r.lhs == symbol]
    if not rules:
        yield (symbol,), 0.0
        return

    def expand(rhs, budget):
        if not rhs:
            yield (), 0.0
            return
        for head, lp in enumerate_derivations(grammar, rhs[0], budget - (len(rhs) - 1)):
            for rest, lp2 in expand(rhs[1:], budget - len(head)):
                yield head + rest, lp + lp2

    for r in rules:
        if len(r.rhs) <= max_len:
            for words, lp in expand(r.rhs, max_len):
                yield words, lp + math.log(r.prob)


@pytest.fixture(scope="module")
def ambiguous():
    return PCFG.from_string(AMBIGUOUS)


@pytest.fixture(scope="module")
def brute(ambiguous):
    """string -> (total probability, number of derivations), and entropy by length."""
    probs: dict[tuple[str, ...], float] = defaultdict(float)
    counts: Counter = Counter()
    ent_by_len: dict[int, float] = defaultdict(float)
    for words, lp in enumerate_derivations(ambiguous, "S", MAX_LEN):
        probs[words] += math.exp(lp)
        counts[words] += 1
        ent_by_len[len(words)] -= math.exp(lp) * lp
    return probs, counts, ent_by_len


def test_inside_equals_sum_over_all_derivations(ambiguous, brute):
    probs, counts, _ = brute
    assert max(counts.values()) > 10  # the grammar really is ambiguous
    for words, p in probs.items():
        assert math.exp(ambiguous.log_prob(words)) == pytest.approx(p, rel=1e-10)


def test_acceptance_is_exactly_membership(ambiguous, brute):
    probs, _, _ = brute
    for n in range(1, MAX_LEN + 1):
        for words in itertools.product("ab", repeat=n):
            assert ambiguous.accepts(words) == (words in probs), words
            if words not in probs:
                assert ambiguous.log_prob(words) == -math.inf
    assert not ambiguous.accepts(())
    assert not ambiguous.accepts(("a", "c"))


def test_length_distribution_matches_brute_force(ambiguous, brute):
    probs, _, ent_by_len = brute
    by_len = defaultdict(float)
    for words, p in probs.items():
        by_len[len(words)] += p
    lengths = ambiguous.length_distribution(MAX_LEN)
    entropy = ambiguous.entropy_by_length(MAX_LEN)
    assert lengths[0] == 0.0
    for n in range(1, MAX_LEN + 1):
        assert lengths[n] == pytest.approx(by_len[n], rel=1e-12)
        assert entropy[n] == pytest.approx(ent_by_len[n], rel=1e-10)


def test_probabilities_sum_to_one(ambiguous, brute):
    probs, _, _ = brute
    # the enumerated strings carry exactly the mass of lengths <= MAX_LEN ...
    assert sum(probs.values()) == pytest.approx(ambiguous.length_distribution(MAX_LEN).sum(), rel=1e-12)
    # ... and the length distribution sums to one: the grammar is consistent
    assert ambiguous.length_distribution(300).sum() == pytest.approx(1.0, abs=1e-9)
    # closed forms agree with the length tables
    lengths = ambiguous.length_distribution(300)
    assert ambiguous.expected_length() == pytest.approx((np.arange(301) * lengths).sum(), rel=1e-6)
    assert ambiguous.derivation_entropy() == pytest.approx(ambiguous.entropy_by_length(300).sum(), rel=1e-6)


def test_unary_cycles_are_summed_exactly():
    g = PCFG([("S", "T", 0.3), ("S", "a", 0.4), ("S", "b", 0.3), ("T", "S", 1.0)])
    assert math.exp(g.log_prob(("a",))) == pytest.approx(0.4 / 0.7, rel=1e-12)
    assert math.exp(g.log_prob(("b",))) == pytest.approx(0.3 / 0.7, rel=1e-12)
    assert g.length_distribution(3).tolist() == pytest.approx([0, 1, 0, 0])


def test_long_sentences_do_not_underflow():
    g = PCFG([("S", "a S", 0.001), ("S", "a", 0.999)])
    n = 150  # P = 1e-447, far below float64's range
    expected = (n - 1) * math.log(0.001) + math.log(0.999)
    assert g.log_prob(("a",) * n) == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def samples(ambiguous):
    return ambiguous.sample_trees(np.random.default_rng(0), 20_000)


def test_sampled_sentence_frequencies_match_inside(ambiguous, brute, samples):
    n = len(samples)
    freq = Counter(tuple(t.words()) for t in samples)
    frequent = [w for w, p in brute[0].items() if p * n >= 20]  # every such string, seen or not
    assert len(frequent) >= 8
    for words in frequent:
        p = math.exp(ambiguous.log_prob(words))
        assert abs(freq[words] / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), words


def test_sampled_rule_frequencies_match_probabilities(ambiguous, samples):
    uses: Counter = Counter()

    def walk(t: Tree):
        uses[(t.label, tuple(c if isinstance(c, str) else c.label for c in t.children))] += 1
        for c in t.children:
            if isinstance(c, Tree):
                walk(c)

    for t in samples:
        walk(t)
    for lhs in ambiguous.nonterminals:
        total = sum(c for (a, _), c in uses.items() if a == lhs)
        for r in ambiguous.rules:
            if r.lhs == lhs:
                got = uses[(lhs, r.rhs)] / total
                assert abs(got - r.prob) < 4.5 * math.sqrt(r.prob * (1 - r.prob) / total), r


def test_length_distribution_matches_monte_carlo(ambiguous, samples):
    n = len(samples)
    freq = Counter(len(t.words()) for t in samples)
    exact = ambiguous.length_distribution(12)
    for k in range(1, 13):
        p = exact[k]
        assert abs(freq[k] / n - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12, k


def test_trees_and_sentences_use_the_same_draws(ambiguous, samples):
    it = ambiguous.iter_sentences(np.random.default_rng(0))
    for tree in samples[:500]:
        assert next(it) == tree.words()
    other = ambiguous.iter_sentences(np.random.default_rng(1))
    assert [next(other) for _ in range(50)] != [t.words() for t in samples[:50]]


def test_tree_probability_is_one_parse_of_the_sentence(ambiguous, samples):
    gaps = [ambiguous.log_prob(tuple(t.words())) - ambiguous.tree_log_prob(t) for t in samples[:300]]
    assert min(gaps) > -1e-9  # a parse never outweighs its sentence
    assert max(gaps) > 0.1  # and ambiguous sentences have other parses
    assert ambiguous.tree_log_prob(Tree("S", ("b",))) == -math.inf  # not a rule


def test_oracle_conditions_on_length_exactly():
    g = PCFG.from_string(UNAMBIGUOUS)
    cap = 6
    oracle = GrammarOracle(g, cap)
    dist: dict[tuple[str, ...], float] = defaultdict(float)
    for words, lp in enumerate_derivations(g, "S", cap):
        dist[words] += math.exp(lp)
    # unambiguous: one derivation per sentence, so sentence = derivation entropy
    total = sum(math.exp(oracle.log_prob(w)) for w in dist)
    assert total == pytest.approx(1.0, rel=1e-12)
    assert oracle.p_fit == pytest.approx(sum(dist.values()), rel=1e-12)
    assert oracle.p_fit < 0.99  # the cap really removes mass
    entropy = -sum(p / oracle.p_fit * math.log(p / oracle.p_fit) for p in dist.values())
    assert oracle.entropy() == pytest.approx(entropy, rel=1e-10)
    tokens = sum(p / oracle.p_fit * (len(w) + 1) for w, p in dist.items())
    assert oracle.entropy_rate() == pytest.approx(entropy / tokens, rel=1e-10)
    long = ("d", "n", "p", "d", "n", "p", "d", "n", "v")
    assert g.accepts(long) and not oracle.accepts(long)
    assert oracle.log_prob(long) == -math.inf and oracle.nll(long) == math.inf


@pytest.mark.parametrize(
    "rules, match",
    [
        ([("S", "a", 0.5), ("S", "b", 0.4)], "sum to"),
        ([("S", (), 1.0)], "empty"),
        ([("S", "S S", 0.6), ("S", "a", 0.4)], "not consistent"),
        ([("S", "a", 1.0), ("X", "b", 1.0)], "unreachable"),
        ([("S", "@X", 1.0), ("@X", "a", 1.0)], "reserved"),
        ([("S", "a", 1.2), ("S", "b", -0.2)], "probability"),
    ],
)
def test_invalid_grammars_are_rejected(rules, match):
    with pytest.raises(ValueError, match=match):
        PCFG(rules)


def test_misspelt_nonterminal_is_caught_with_a_terminal_list():
    with pytest.raises(ValueError, match="unknown symbols"):
        PCFG([("S", "NP v", 1.0), ("Np", "n", 1.0)], terminals=["n", "v"])
