"""How often a PCFG's rules are used: exactly under the grammar, and in parsed samples.

Both numbers are gradients. For any sum ``Z`` over derivations ``d`` of
``prod_r p_r ** c_r(d)``, ``p_r * d log Z / d p_r = E[c_r]`` over the derivations
weighted by their terms (Eisner 2016, "Inside-outside and forward-backward algorithms
are just backprop", section 2). So, with the rule probabilities as a leaf tensor:

* :meth:`RuleUsage.posterior` differentiates the inside algorithm of one sentence:
  ``E[c_r | words]``, summed over every parse of an ambiguous sentence (the outside pass);
* :meth:`RuleUsage.expected` differentiates the exact length-table mass
  ``P(1 <= len <= max_len)``: ``E[c_r | len <= max_len]``, the usage of the data
  distribution of a task that keeps only the sentences that fit its sequences.

The recursions are those of :class:`~dlmbench.tasks.pcfg.PCFG` (CKY over its
binarised grammar, unary chains summed by the closure ``(I - M)^-1``, a log-scale per
span), in float64 torch so that autograd runs the outside pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from dlmbench.tasks.pcfg import PCFG

_F64 = torch.float64


class RuleUsage:
    """Expected rule counts of ``grammar``, indexed like ``grammar.rules``."""

    def __init__(self, grammar: PCFG):
        self.grammar = grammar
        b = grammar.binarised
        idx = b.symbols
        self.k = len(idx)
        self.start = idx[grammar.start]
        self.theta = torch.tensor([r.prob for r in grammar.rules], dtype=_F64)

        def ints(values):
            return torch.tensor(values, dtype=torch.long)

        self.lhs, self.left, self.right = (ints([idx[e[j]] for e in b.binary]) for j in range(3))
        self.bin_rule = ints([e[4] for e in b.binary])
        self.un_lhs, self.un_rhs = (ints([idx[e[j]] for e in b.unary]) for j in range(2))
        self.un_rule = ints([e[3] for e in b.unary])
        words = sorted({w for _, w, _, _ in b.emit})
        self.word_row = {w: i for i, w in enumerate(words)}
        self.em_word = ints([self.word_row[w] for _, w, _, _ in b.emit])
        self.em_lhs = ints([idx[a] for a, *_ in b.emit])
        self.em_rule = ints([e[3] for e in b.emit])
        self.num_words = len(words)
        self.posterior = lru_cache(maxsize=100_000)(self._posterior)
        self.expected = lru_cache(maxsize=16)(self._expected)

    def _probs(self, theta: torch.Tensor):
        """The binarised tables as functions of ``theta``: binary rule probabilities,
        the unary closure and the emission matrix ``(words, K)``."""

        def carried(rule: torch.Tensor) -> torch.Tensor:  # -1: a structural piece, p = 1
            return torch.where(rule >= 0, theta[rule.clamp(min=0)], torch.ones((), dtype=_F64))

        unary = torch.zeros(self.k, self.k, dtype=_F64).index_put(
            (self.un_lhs, self.un_rhs), carried(self.un_rule), accumulate=True)
        closure = torch.linalg.inv(torch.eye(self.k, dtype=_F64) - unary)
        emission = torch.zeros(self.num_words, self.k, dtype=_F64).index_put(
            (self.em_word, self.em_lhs), carried(self.em_rule), accumulate=True)
        return carried(self.bin_rule), closure, emission

    def _counts(self, log_z) -> np.ndarray:
        theta = self.theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_z(theta), theta)
        return (theta * grad).detach().numpy()

    def _posterior(self, words: tuple[str, ...]) -> np.ndarray:
        """``E[c_r | words]`` (call :attr:`posterior`, memoised); ``words`` must be a sentence."""
        if not self.grammar.accepts(words):
            raise ValueError(f"not a sentence of the grammar: {' '.join(words)!r}")
        rows = torch.tensor([self.word_row[w] for w in words], dtype=torch.long)
        return self._counts(lambda theta: self._inside(theta, rows))

    def _inside(self, theta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        binary, closure, emission = self._probs(theta)
        n = len(rows)
        leaf = emission[rows] @ closure.T  # (n, K): the inside vector of each word
        top = leaf.detach().max(dim=1).values
        chart, scale = {1: leaf / top[:, None]}, {1: top.log()}  # inside = chart * exp(scale)
        for width in range(2, n + 1):
            npos = n - width + 1
            splits = range(1, width)
            left = torch.stack([chart[s][:npos] for s in splits])  # (splits, npos, K)
            right = torch.stack([chart[width - s][s : s + npos] for s in splits])
            zs = torch.stack([scale[s][:npos] + scale[width - s][s : s + npos] for s in splits])
            zmax = zs.max(dim=0).values
            zmax = torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))
            weight = torch.exp(zs - zmax)  # 0 where a split is impossible
            prod = left[..., self.left] * right[..., self.right] * binary  # (splits, npos, R)
            acc = torch.einsum("spr,sp->pr", prod, weight)
            span = torch.zeros(npos, self.k, dtype=_F64).index_add(1, self.lhs, acc) @ closure.T
            top = span.detach().max(dim=1).values
            safe = torch.where(top > 0, top, torch.ones_like(top))
            chart[width] = span / safe[:, None]
            scale[width] = torch.where(top > 0, zmax + safe.log(), torch.full_like(top, -torch.inf))
        return chart[n][0, self.start].log() + scale[n][0]

    def _expected(self, max_len: int) -> np.ndarray:
        """``E[c_r | 1 <= len <= max_len]`` (call :attr:`expected`, memoised)."""
        return self._counts(lambda theta: self._mass(theta, int(max_len)).log())

    def _mass(self, theta: torch.Tensor, max_len: int) -> torch.Tensor:
        """``P(1 <= len <= max_len)``: the length tables of ``PCFG._length_tables``."""
        binary, closure, emission = self._probs(theta)
        tables = [closure @ emission.sum(dim=0)]  # P(A derives exactly 1 word)
        for n in range(2, max_len + 1):
            shorter = torch.stack(tables)  # (n - 1, K): lengths 1 .. n - 1
            pairs = (shorter[:, self.left] * shorter.flip(0)[:, self.right]).sum(dim=0) * binary
            tables.append(closure @ torch.zeros(self.k, dtype=_F64).index_add(0, self.lhs, pairs))
        return torch.stack(tables)[:, self.start].sum()


def usage_kl(sample_counts: Sequence[np.ndarray], expected: np.ndarray) -> float:
    """``KL(q || p)`` in nats between the samples' rule-usage frequencies ``q`` (their
    summed posterior counts, normalised) and the grammar's ``p`` (``expected``, normalised)."""
    q = np.sum(sample_counts, axis=0)
    q, p = q / q.sum(), expected / expected.sum()
    used = q > 0
    return float(np.sum(q[used] * np.log(q[used] / p[used])))
