"""A probabilistic context-free grammar with exact, vectorised algorithms.

This file runs past 400 lines because it is one object: sampling, the inside algorithm
and the exact length tables all read the binarised tables :meth:`PCFG._compile` builds,
so a split would scatter one class's private state over several modules (the small
:class:`GrammarOracle` only conditions those exact quantities on length).

The default dlmbench task draws its data from a PCFG so that the data distribution is
known exactly. This module is the generic machinery; the concrete English-like grammar
lives in :mod:`dlmbench.tasks.english`.

* :class:`PCFG` validates its rules (each left-hand side sums to 1, no empty
  right-hand side, the grammar is consistent: finite derivations have total mass 1),
  samples derivation trees from a seeded numpy generator, and computes
  ``log P(sentence)`` summed over *all* parses with the inside algorithm.
* :class:`GrammarOracle` is a PCFG conditioned on ``len <= max_len``: the
  distribution of a corpus that rejects sentences longer than its sequences allow.

The inside algorithm runs CKY over an internal binarised copy of the grammar: rules
longer than two are chained through intermediate symbols with probability 1, terminals
inside longer rules get a preterminal with probability 1, and unary rules ``A -> B``
are folded into a closure matrix ``(I - M)^-1`` applied after every span, which sums
unary chains (even cycles) exactly. Probabilities are float64 with a log-scale per
span, so long sentences neither underflow nor lose the sum over parses.
"""

from __future__ import annotations

import bisect
import gc
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Union

import numpy as np

_TOL = 1e-9


@dataclass(frozen=True)
class Rule:
    """``lhs -> rhs`` with probability ``prob``; ``rhs`` mixes nonterminals and words."""

    lhs: str
    rhs: tuple[str, ...]
    prob: float


class Binarised(NamedTuple):
    """The binarised grammar the exact algorithms run on; each entry names the index in
    ``PCFG.rules`` of the rule whose probability it carries (-1: a structural piece of
    probability 1), so quantities over it map back to the original rules."""

    symbols: dict[str, int]
    binary: list[tuple[str, str, str, float, int]]  # lhs -> left right
    unary: list[tuple[str, str, float, int]]  # lhs -> nonterminal
    emit: list[tuple[str, str, float, int]]  # lhs -> word


class Tree(NamedTuple):
    """A derivation: ``label`` is a nonterminal, ``children`` are Trees or words."""

    label: str
    children: tuple[Union["Tree", str], ...]

    def words(self) -> list[str]:
        """The yield (the sentence) of the tree, left to right."""
        out: list[str] = []
        stack: list[Tree | str] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                out.append(node)
            else:
                stack.extend(reversed(node.children))
        return out


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many trees.

    Millions of small tuples trigger collections constantly (sampling a corpus of trees
    runs 5-10x slower); trees hold no reference cycles, so nothing is lost.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _uniforms(rng: np.random.Generator, block: int = 8192) -> Iterator[float]:
    """Uniform draws in blocks: one Python float per rule choice, cheaply."""
    while True:
        yield from rng.random(block).tolist()


class PCFG:
    """A validated PCFG over word terminals.

    ``rules`` are :class:`Rule` objects or ``(lhs, rhs, prob)`` tuples (``rhs`` a tuple
    or a space-separated string). A symbol is a nonterminal iff it is some rule's
    left-hand side; every other right-hand-side symbol is a word. Passing
    ``terminals`` makes a misspelt nonterminal an error instead of a silent new word.
    """

    def __init__(
        self,
        rules: Iterable[Rule | tuple[str, Sequence[str] | str, float]],
        start: str = "S",
        terminals: Iterable[str] | None = None,
    ):
        parsed: list[Rule] = []
        for r in rules:
            if not isinstance(r, Rule):
                lhs, rhs, prob = r
                rhs = tuple(rhs.split()) if isinstance(rhs, str) else tuple(rhs)
                r = Rule(lhs, rhs, float(prob))
            parsed.append(r)
        self.rules: tuple[Rule, ...] = tuple(parsed)
        self.start = start
        self._by_lhs: dict[str, list[Rule]] = {}
        for r in self.rules:
            self._by_lhs.setdefault(r.lhs, []).append(r)
        self.nonterminals: tuple[str, ...] = tuple(self._by_lhs)
        self.terminals: frozenset[str] = frozenset(
            s for r in self.rules for s in r.rhs if s not in self._by_lhs
        )
        self._validate(terminals)
        self._prob = {(r.lhs, r.rhs): r.prob for r in self.rules}
        # sampling tables: cumulative probabilities per nonterminal
        self._choices: dict[str, tuple[list[float], list[tuple[str, ...]]]] = {}
        for lhs, rs in self._by_lhs.items():
            cum = np.cumsum([r.prob for r in rs]).tolist()
            cum[-1] = 1.0 + 1e-12  # a draw u < 1 always lands inside
            self._choices[lhs] = (cum, [r.rhs for r in rs])
        self._lexical = {  # preterminals: lhs -> (cum, [(word,), ...])
            lhs: (cum, [rhs for rhs in rhss])
            for lhs, (cum, rhss) in self._choices.items()
            if lhs != start and all(len(r) == 1 and r[0] not in self._by_lhs for r in rhss)
        }
        self._compile()
        self._inside_cached = lru_cache(maxsize=200_000)(self._inside)

    @classmethod
    def from_string(cls, text: str, start: str = "S") -> "PCFG":
        """Rules one per line as ``LHS -> sym sym ... PROB`` (``#`` starts a comment)."""
        rules = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            lhs, _, rest = line.partition("->")
            *rhs, prob = rest.split()
            rules.append((lhs.strip(), tuple(rhs), float(prob)))
        return cls(rules, start=start)

    # validation -----------------------------------------------------------------------
    def _validate(self, terminals: Iterable[str] | None) -> None:
        if self.start not in self._by_lhs:
            raise ValueError(f"start symbol {self.start!r} has no rules")
        for r in self.rules:
            if r.lhs[:1] in ("@", "'"):
                raise ValueError(f"nonterminal {r.lhs!r}: names starting with @ or ' are reserved")
            if not r.rhs:
                raise ValueError(f"rule {r.lhs} -> (empty): empty right-hand sides are unsupported")
            if not (0.0 < r.prob <= 1.0):
                raise ValueError(f"rule {r.lhs} -> {' '.join(r.rhs)} has probability {r.prob}")
        for lhs, rs in self._by_lhs.items():
            total = math.fsum(r.prob for r in rs)
            if abs(total - 1.0) > _TOL:
                raise ValueError(f"rules of {lhs!r} sum to {total!r}, not 1")
        if terminals is not None:
            unknown = self.terminals - set(terminals)
            if unknown:
                raise ValueError(f"right-hand sides use unknown symbols {sorted(unknown)[:10]}")
        reach, todo = {self.start}, [self.start]
        while todo:
            for r in self._by_lhs[todo.pop()]:
                for s in r.rhs:
                    if s in self._by_lhs and s not in reach:
                        reach.add(s)
                        todo.append(s)
        if len(reach) != len(self._by_lhs):
            raise ValueError(f"unreachable nonterminals: {sorted(set(self._by_lhs) - reach)}")
        rho = max(abs(np.linalg.eigvals(self._mean_matrix())))
        if rho >= 1.0 - 1e-9:
            raise ValueError(
                f"grammar is not consistent (expected-offspring spectral radius {rho:.4f} >= 1): "
                "derivations may not terminate; lower the recursive rules' probabilities"
            )

    def _mean_matrix(self) -> np.ndarray:
        """``E[A, B]``: expected number of ``B`` children when expanding ``A``."""
        idx = {a: i for i, a in enumerate(self.nonterminals)}
        m = np.zeros((len(idx), len(idx)))
        for r in self.rules:
            for s in r.rhs:
                if s in idx:
                    m[idx[r.lhs], idx[s]] += r.prob
        return m

    # closed-form expectations over derivations ----------------------------------------
    def _expectation(self, per_rule) -> dict[str, float]:
        """Solve ``x_A = sum_r p_r (f(r) + sum_children x_child)`` for every ``A``."""
        idx = {a: i for i, a in enumerate(self.nonterminals)}
        local = np.zeros(len(idx))
        for r in self.rules:
            local[idx[r.lhs]] += r.prob * per_rule(r)
        x = np.linalg.solve(np.eye(len(idx)) - self._mean_matrix(), local)
        return {a: float(x[i]) for a, i in idx.items()}

    def expected_length(self, symbol: str | None = None) -> float:
        """Exact mean number of words derived from ``symbol`` (default: start)."""
        e = self._expectation(lambda r: sum(s not in self._by_lhs for s in r.rhs))
        return e[symbol or self.start]

    def derivation_entropy(self, symbol: str | None = None) -> float:
        """Exact entropy (nats) of the derivation distribution.

        Equals the entropy of the sentence distribution iff the grammar is unambiguous.
        """
        e = self._expectation(lambda r: -math.log(r.prob))
        return e[symbol or self.start]

    # sampling -------------------------------------------------------------------------
    def iter_trees(self, rng: np.random.Generator) -> Iterator[Tree]:
        """An endless stream of derivation trees; draws one uniform per expansion.

        Keeping many trees is much faster inside :func:`paused_gc`.
        """
        draw = _uniforms(rng)
        while True:
            yield self._sample_tree(draw)

    def iter_sentences(self, rng: np.random.Generator) -> Iterator[list[str]]:
        """Like :meth:`iter_trees` but yields only the words (same draws, faster)."""
        draw = _uniforms(rng)
        choices = self._choices
        while True:
            words: list[str] = []
            stack = [self.start]
            while stack:
                sym = stack.pop()
                ch = choices.get(sym)
                if ch is None:
                    words.append(sym)
                    continue
                cum, rhss = ch
                stack.extend(reversed(rhss[bisect.bisect_right(cum, next(draw))]))
            yield words

    def sample(self, rng: np.random.Generator) -> Tree:
        """One derivation tree."""
        return next(self.iter_trees(rng))

    def sample_trees(self, rng: np.random.Generator, n: int) -> list[Tree]:
        """``n`` derivation trees (the first ``n`` of :meth:`iter_trees`)."""
        it = self.iter_trees(rng)
        with paused_gc():
            return [next(it) for _ in range(n)]

    def _sample_tree(self, draw: Iterator[float]) -> Tree:
        # pre-order, left to right: the same order of draws as iter_sentences; a
        # preterminal (all rules are single words) is expanded inline, saving a call
        choices, lexical, make, pick = self._choices, self._lexical, tuple.__new__, bisect.bisect_right

        def expand(sym: str) -> Tree:
            cum, rhss = choices[sym]
            kids = []
            for s in rhss[pick(cum, next(draw))]:
                if s in lexical:
                    lcum, lwords = lexical[s]
                    kids.append(make(Tree, (s, lwords[pick(lcum, next(draw))])))
                elif s in choices:
                    kids.append(expand(s))
                else:
                    kids.append(s)
            return make(Tree, (sym, tuple(kids)))

        try:
            return expand(self.start)
        except RecursionError:
            raise ValueError("derivation deeper than Python's recursion limit") from None

    def tree_log_prob(self, tree: Tree) -> float:
        """Log probability of one derivation (not summed over other parses)."""
        total, stack = 0.0, [tree]
        while stack:
            node = stack.pop()
            rhs = tuple(c if isinstance(c, str) else c.label for c in node.children)
            p = self._prob.get((node.label, rhs))
            if p is None:
                return -math.inf
            total += math.log(p)
            stack.extend(c for c in node.children if not isinstance(c, str))
        return total

    # the binarised form used by the exact algorithms ----------------------------------
    def _compile(self) -> None:
        syms: dict[str, int] = {a: i for i, a in enumerate(self.nonterminals)}
        binary: list[tuple[str, str, str, float, int]] = []
        unary: list[tuple[str, str, float, int]] = []
        emit: list[tuple[str, str, float, int]] = []
        made: set[str] = set()

        def pre(s: str) -> str:
            """A nonterminal standing for ``s`` inside a rule of length >= 2."""
            if s in syms:
                return s
            p = "'" + s
            if p not in made:
                made.add(p)
                syms[p] = len(syms)
                emit.append((p, s, 1.0, -1))
            return p

        for index, r in enumerate(self.rules):
            if len(r.rhs) == 1:
                (s,) = r.rhs
                (unary if s in self._by_lhs else emit).append((r.lhs, s, r.prob, index))
                continue
            parts = [pre(s) for s in r.rhs]
            lhs, prob = r.lhs, r.prob
            while len(parts) > 2:  # A -> X Y Z  ==>  A -> X @Y+Z,  @Y+Z -> Y Z (p = 1)
                rest = "@" + "+".join(parts[1:])
                binary.append((lhs, parts[0], rest, prob, index))
                if rest in made:
                    lhs = None  # shared suffix: its chain already exists
                    break
                made.add(rest)
                syms[rest] = len(syms)
                lhs, prob, parts, index = rest, 1.0, parts[1:], -1
            if lhs is not None:
                binary.append((lhs, parts[0], parts[1], prob, index))

        k = len(syms)
        self.binarised = Binarised(syms, binary, unary, emit)
        self._sym_index = syms
        self._start_idx = syms[self.start]
        self._bin_lhs = np.array([syms[a] for a, *_ in binary], dtype=np.int64)
        self._bin_left = np.array([syms[b] for _, b, *_ in binary], dtype=np.int64)
        self._bin_right = np.array([syms[c] for _, _, c, *_ in binary], dtype=np.int64)
        self._bin_prob = np.array([p for *_, p, _ in binary])
        # (R, K): rule r adds prob_r to its lhs
        self._bin_to_lhs = np.zeros((len(binary), k))
        self._bin_to_lhs[np.arange(len(binary)), self._bin_lhs] = self._bin_prob
        self._scatter = (self._bin_to_lhs > 0).astype(float)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        m = np.zeros((k, k))
        for a, b, p, _ in unary:
            m[syms[a], syms[b]] += p
        if m.any() and max(abs(np.linalg.eigvals(m))) >= 1.0 - 1e-12:
            raise ValueError("unary rules form a cycle with total probability 1")
        self._unary = m
        self._closure = np.linalg.inv(np.eye(k) - m)  # sums every unary chain
        self._closure_t = np.ascontiguousarray(self._closure.T)
        self._emission: dict[str, np.ndarray] = {}
        for a, w, p, _ in emit:
            self._emission.setdefault(w, np.zeros(k))[syms[a]] += p
        # after closure: the vector of inside probabilities of a single word
        self._word_inside = {w: v @ self._closure_t for w, v in self._emission.items()}
        term = np.zeros(k)  # total probability that A rewrites directly to one word
        ent = np.zeros(k)  # and the entropy contributed by those rules
        for a, _, p, _ in emit:
            term[syms[a]] += p
            ent[syms[a]] -= p * math.log(p)
        self._term_total, self._term_entropy = term, ent
        self._compile_adjacency(binary, unary, emit)

    def _compile_adjacency(self, binary, unary, emit) -> None:
        """Which words can start, end, or follow each other in some sentence.

        Every adjacency in a parse joins the last word of a binary node's left child to
        the first word of its right child, so these FIRST/LAST sets give a necessary
        condition that rejects most non-sentences in O(n) before the O(n^3) chart.
        """
        syms, words = self._sym_index, sorted(self._emission)
        self._word_idx = {w: i for i, w in enumerate(words)}
        first = np.zeros((len(syms), len(words)), dtype=bool)
        for a, w, *_ in emit:
            first[syms[a], self._word_idx[w]] = True
        last = first.copy()
        changed = True
        while changed:
            before = first.sum() + last.sum()
            for a, b, c, *_ in binary:
                first[syms[a]] |= first[syms[b]]
                last[syms[a]] |= last[syms[c]]
            for a, b, *_ in unary:
                first[syms[a]] |= first[syms[b]]
                last[syms[a]] |= last[syms[b]]
            changed = first.sum() + last.sum() != before
        adjacent = np.zeros((len(words), len(words)), dtype=bool)
        for _, b, c, *_ in binary:
            adjacent |= np.outer(last[syms[b]], first[syms[c]])
        self._adjacent = adjacent
        self._can_start = first[self._start_idx]
        self._can_end = last[self._start_idx]

    def _plausible(self, words: Sequence[str]) -> bool:
        """The O(n) necessary condition of :meth:`_compile_adjacency`."""
        idx = [self._word_idx.get(w) for w in words]
        if not idx or None in idx or not (self._can_start[idx[0]] and self._can_end[idx[-1]]):
            return False
        return bool(self._adjacent[idx[:-1], idx[1:]].all())

    # inside algorithm -----------------------------------------------------------------
    def log_prob(self, words: Sequence[str]) -> float:
        """``log P(words)`` summed over every parse; ``-inf`` if not in the language.

        Memoised per sentence: metrics rescore the same samples many times.
        """
        return self._inside_cached(tuple(words))

    def _inside(self, words: tuple[str, ...]) -> float:
        """CKY over the binarised grammar, one vectorised step per span width.

        Cell (i, j) holds a vector ``v`` over nonterminals and a log-scale ``z``: the
        inside probabilities are ``v * exp(z)`` with ``max(v) = 1``.
        """
        n = len(words)
        if not self._plausible(words):
            return -math.inf
        k = len(self._sym_index)
        v = np.zeros((n + 1, n + 1, k))
        z = np.full((n + 1, n + 1), -np.inf)
        for i, w in enumerate(words):
            vec = self._word_inside[w]
            top = vec.max()
            v[i, i + 1] = vec / top
            z[i, i + 1] = math.log(top)
        left_idx, right_idx, to_lhs = self._bin_left, self._bin_right, self._bin_to_lhs
        for width in range(2, n + 1):
            npos = n - width + 1
            i = np.arange(npos)[:, None]
            s = np.arange(1, width)[None, :]
            left, zl = v[i, i + s], z[i, i + s]  # (npos, splits, K), (npos, splits)
            right, zr = v[i + s, i + width], z[i + s, i + width]
            zs = zl + zr
            zmax = zs.max(axis=1)
            zmax = np.where(np.isfinite(zmax), zmax, 0.0)
            weight = np.exp(zs - zmax[:, None])  # 0 where a split is impossible
            prod = left[:, :, left_idx] * right[:, :, right_idx]  # (npos, splits, R)
            acc = np.einsum("psr,ps->pr", prod, weight) @ to_lhs  # (npos, K)
            acc = acc @ self._closure_t
            top = acc.max(axis=1)
            ok = top > 0
            rows = np.arange(npos)
            v[rows[ok], rows[ok] + width] = acc[ok] / top[ok, None]
            z[rows[ok], rows[ok] + width] = zmax[ok] + np.log(top[ok])
        p = v[0, n, self._start_idx]
        return float(math.log(p) + z[0, n]) if p > 0 else -math.inf

    def accepts(self, words: Sequence[str]) -> bool:
        """Whether the grammar derives ``words``; most non-sentences reject in O(n)."""
        return self._plausible(words) and self.log_prob(words) > -math.inf

    # exact length distribution and entropy by length ---------------------------------
    def _length_tables(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """``P[n, A]`` = P(A derives exactly n words); ``H[n, A]`` = the sum over those
        derivations of ``-p log p``. Words are >= 1 per symbol, so n only needs smaller n.
        """
        if max_len in self._tables:
            return self._tables[max_len]
        k = len(self._sym_index)
        p_tab = np.zeros((max_len + 1, k))
        h_tab = np.zeros((max_len + 1, k))
        bl, br, bp = self._bin_left, self._bin_right, self._bin_prob
        with np.errstate(divide="ignore", invalid="ignore"):
            u_ent = np.where(self._unary > 0, -self._unary * np.log(self._unary), 0.0)
        rule_ent = -bp * np.log(bp)
        for n in range(1, max_len + 1):
            if n == 1:
                p0, h0 = self._term_total.copy(), self._term_entropy.copy()
            else:
                pl, pr = p_tab[1:n][:, bl], p_tab[n - 1 : 0 : -1][:, br]  # (n-1, R)
                hl, hr = h_tab[1:n][:, bl], h_tab[n - 1 : 0 : -1][:, br]
                pp = (pl * pr).sum(axis=0)
                hh = (hl * pr + pl * hr).sum(axis=0)
                p0 = pp @ self._bin_to_lhs
                h0 = (rule_ent * pp + bp * hh) @ self._scatter
            p_tab[n] = self._closure @ p0
            h_tab[n] = self._closure @ (h0 + u_ent @ p_tab[n])
        self._tables[max_len] = (p_tab, h_tab)
        return p_tab, h_tab

    def length_distribution(self, max_len: int, symbol: str | None = None) -> np.ndarray:
        """Exact ``P(len = n)`` for ``n = 0..max_len`` (entry 0 is always 0)."""
        p_tab, _ = self._length_tables(int(max_len))
        return p_tab[:, self._sym_index[symbol or self.start]].copy()

    def entropy_by_length(self, max_len: int, symbol: str | None = None) -> np.ndarray:
        """``sum -p(d) log p(d)`` over derivations ``d`` with exactly ``n`` words."""
        _, h_tab = self._length_tables(int(max_len))
        return h_tab[:, self._sym_index[symbol or self.start]].copy()


class GrammarOracle:
    """A PCFG conditioned on ``1 <= len <= max_len``: the exact data distribution of a
    corpus that keeps only sentences fitting its sequences, and its exact scores.

    Token counts include one EOS per sentence (the sentence's end is a prediction too).
    """

    def __init__(self, grammar: PCFG, max_len: int):
        self.grammar = grammar
        self.max_len = int(max_len)
        self.length_probs = grammar.length_distribution(self.max_len)
        self.p_fit = float(self.length_probs.sum())
        if self.p_fit <= 0:
            raise ValueError(f"no sentence of the grammar has at most {max_len} words")
        self.log_p_fit = math.log(self.p_fit)

    def accepts(self, words: Sequence[str]) -> bool:
        """A sentence of the grammar with ``1 <= len <= max_len``."""
        return 0 < len(words) <= self.max_len and self.grammar.accepts(words)

    def log_prob(self, words: Sequence[str]) -> float:
        """Log probability under the length-conditioned distribution."""
        if not 0 < len(words) <= self.max_len:
            return -math.inf
        lp = self.grammar.log_prob(tuple(words))
        return lp - self.log_p_fit if lp > -math.inf else -math.inf

    def nll(self, words: Sequence[str]) -> float:
        return -self.log_prob(words)

    def mean_tokens(self) -> float:
        """Expected words + 1 (EOS) per sentence of the conditioned distribution."""
        n = np.arange(self.max_len + 1)
        return float(((n + 1) * self.length_probs).sum() / self.p_fit)

    def entropy(self) -> float:
        """Exact entropy (nats/sentence) of the conditioned distribution.

        Computed from derivations, so it is the sentence entropy when the grammar is
        unambiguous (each sentence has one parse), an upper bound otherwise.
        """
        h = float(self.grammar.entropy_by_length(self.max_len).sum())
        return h / self.p_fit + self.log_p_fit

    def entropy_rate(self) -> float:
        """Exact nats per token (words and EOS): the best achievable oracle NLL."""
        return self.entropy() / self.mean_tokens()
