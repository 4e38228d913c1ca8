"""Exact metrics of the grammar tasks: the true NLL, grammaticality, rule usage, exact match.

The grammar task's data distribution is known (a PCFG conditioned on length), so a
sample's quality needs no judge model:

* ``oracle-nll``: the true negative log-likelihood per token of the *grammatical*
  samples (its n is the number accepted: read it with ``grammar-accept``);
* ``oracle-nll-all``: the same over *all* samples, under the oracle smoothed with a
  uniform-token backoff, so an ungrammatical sample costs instead of vanishing;
* ``grammar-accept``: the fraction of samples that are sentences at all;
* ``rule-kl``: diversity against an exact reference, the KL between the rules the
  samples' parses use and the grammar's exact expected rule usage (inside-outside);
* ``exact-match`` serves the conditional tasks, whose references are deterministic.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from pydantic import Field

import dlmbench
from dlmbench.data import Generation
from dlmbench.metric import Metric, MetricConfig, MetricValue
from dlmbench.task import TaskData
from dlmbench.tasks.pcfg import PCFG, GrammarOracle
from dlmbench.tasks.rule_usage import RuleUsage, usage_kl


def _grammar_oracle(task: TaskData) -> GrammarOracle | None:
    oracle = task.oracle
    return oracle if isinstance(oracle, GrammarOracle) and not task.spec.conditional else None


def _oracle_of(task: TaskData, metric: str) -> GrammarOracle:
    oracle = _grammar_oracle(task)
    assert oracle is not None, f"{metric} needs the (unconditional) grammar task"
    return oracle


def sample_words(generation: Generation, task: TaskData) -> list[list[str] | None]:
    """Each sample's sentence as words, or None when the sample never emits EOS.

    ``Generation.tokens`` is already cut before the first EOS; whatever follows that
    EOS is ignored (the EOS-padding convention: the sentence ends there).
    """
    eos = task.spec.eos_id
    tail = generation.ids[:, task.spec.prefix_len :]
    has_eos = (tail == eos).any(dim=1).tolist()
    backend = task.tokenizer.backend
    out: list[list[str] | None] = []
    for ids, ended in zip(generation.tokens, has_eos):
        out.append([backend.id_to_token(int(i)) or "" for i in ids] if ended else None)
    return out


def _ratio_stderr(num: list[float], den: list[float]) -> float | None:
    """Delta-method standard error of ``sum(num) / sum(den)`` over i.i.d. samples."""
    n = len(num)
    if n < 2:
        return None
    ratio = sum(num) / sum(den)
    mean_den = sum(den) / n
    resid = [a - ratio * b for a, b in zip(num, den)]
    var = sum(r * r for r in resid) / (n - 1)
    return math.sqrt(var / n) / mean_den


def _per_token(nll: list[float], tokens: list[float], details: dict) -> MetricValue:
    """Pooled NLL per token with its delta-method stderr and the per-sentence mean."""
    per_sentence = MetricValue.mean_of(nll)
    return MetricValue(
        sum(nll) / sum(tokens), _ratio_stderr(nll, tokens),
        {**details, "n": len(nll), "nll_per_sentence": per_sentence.value,
         "nll_per_sentence_stderr": per_sentence.stderr, "tokens": int(sum(tokens))},
    )


class OracleNLL(Metric):
    name = "oracle-nll"
    higher_is_better = False
    description = (
        "True NLL per token (nats; words + EOS) of the generated sentences under the "
        "data distribution, pooled over grammatical samples (see grammar-accept)"
    )

    def applies_to(self, task: TaskData) -> bool:
        return _grammar_oracle(task) is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        oracle = _oracle_of(task, self.name)
        nll: list[float] = []
        tokens: list[float] = []
        for words in sample_words(generation, task):
            if words is None or not oracle.accepts(words):
                continue
            nll.append(oracle.nll(words))
            tokens.append(len(words) + 1.0)
        n = len(generation.tokens)
        details = {"samples": n, "accepted": len(nll), "max_words": oracle.max_len}
        if not nll:
            return MetricValue(float("nan"), None, {**details, "n": 0}, n=0,
                               undefined=f"no grammatical sample (0 of {n} accepted)")
        return _per_token(nll, tokens, details)


class SmoothedNLLConfig(MetricConfig):
    backoff: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="weight of the uniform-token backoff in the smoothed oracle",
    )


class OracleNLLAll(Metric):
    name = "oracle-nll-all"
    higher_is_better = False
    description = (
        "NLL per token (nats) of every sample under the oracle smoothed with a uniform-token "
        "backoff, (1 - b) p_data + b V^-(tokens): an ungrammatical sample costs about log V "
        "per token instead of leaving the average (b = backoff, V = vocabulary size)"
    )
    Config = SmoothedNLLConfig

    def applies_to(self, task: TaskData) -> bool:
        return _grammar_oracle(task) is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        oracle = _oracle_of(task, self.name)
        b, log_v = self.config.backoff, math.log(task.tokenizer.vocab_size)
        nll: list[float] = []
        tokens: list[float] = []
        accepted = 0
        for ids, words in zip(generation.tokens, sample_words(generation, task)):
            count = len(ids) + (words is not None)  # the EOS is a token when emitted
            backoff = math.log(b) - count * log_v  # i.i.d. uniform tokens: a proper distribution
            lp = oracle.log_prob(words) if words is not None else -math.inf
            accepted += lp > -math.inf
            nll.append(-float(np.logaddexp(math.log1p(-b) + lp, backoff)))
            tokens.append(float(count))
        details = {"samples": len(nll), "accepted": accepted, "max_words": oracle.max_len,
                   "vocab_size": task.tokenizer.vocab_size, "backoff": b}
        if not nll:
            return MetricValue(float("nan"), None, {**details, "n": 0}, n=0, undefined="no samples")
        return _per_token(nll, tokens, details)


class GrammarAccept(Metric):
    name = "grammar-accept"
    higher_is_better = True
    description = (
        "Fraction of samples that end (EOS) and are a non-empty sentence of the grammar "
        "within the length cap"
    )

    def applies_to(self, task: TaskData) -> bool:
        return _grammar_oracle(task) is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        oracle = _oracle_of(task, self.name)
        words = sample_words(generation, task)
        ok = [1.0 if w is not None and oracle.accepts(w) else 0.0 for w in words]
        return MetricValue.mean_of(
            ok, no_eos=sum(w is None for w in words), max_words=oracle.max_len
        )


@lru_cache(maxsize=4)
def _rule_usage(grammar: PCFG) -> RuleUsage:
    return RuleUsage(grammar)


class RuleKLConfig(MetricConfig):
    bootstrap: int = Field(200, ge=0, description="resamples for the standard error (0: none)")


class RuleKL(Metric):
    name = "rule-kl"
    higher_is_better = False
    description = (
        "KL (nats) from the rule-usage frequencies of the grammatical samples' parses "
        "(posterior counts over every parse) to the grammar's exact expected rule usage "
        "under the length-conditioned data distribution; 0 when a model uses the rules as "
        "the data does. Its finite-sample floor is the held-out data row"
    )
    Config = RuleKLConfig

    def applies_to(self, task: TaskData) -> bool:
        return _grammar_oracle(task) is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        oracle = _oracle_of(task, self.name)
        usage = _rule_usage(oracle.grammar)
        counts = [usage.posterior(tuple(w)) for w in sample_words(generation, task)
                  if w is not None and oracle.accepts(w)]
        details = {"samples": len(generation.tokens), "accepted": len(counts),
                   "rules": len(oracle.grammar.rules), "max_words": oracle.max_len}
        if not counts:
            return MetricValue(float("nan"), None, {**details, "n": 0}, n=0,
                               undefined=f"no grammatical sample (0 of {len(generation.tokens)} accepted)")
        expected = usage.expected(oracle.max_len)
        stderr = None
        if self.config.bootstrap and len(counts) > 1:
            rng = np.random.default_rng(0)
            table = np.stack(counts)
            resampled = [usage_kl(table[rng.integers(0, len(counts), len(counts))], expected)
                         for _ in range(self.config.bootstrap)]
            stderr = float(np.std(resampled, ddof=1))
        return MetricValue(usage_kl(counts, expected), stderr, {**details, "n": len(counts)})


class ExactMatch(Metric):
    name = "exact-match"
    higher_is_better = True
    description = "Fraction of samples whose text equals the reference (whitespace-normalised)"

    def applies_to(self, task: TaskData) -> bool:
        return task.references is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        refs = generation.references if generation.references is not None else task.references
        if refs is None or len(refs) != len(generation.texts):
            raise ValueError(
                f"exact-match needs one reference per sample: {len(generation.texts)} samples, "
                f"{None if refs is None else len(refs)} references"
            )
        hits = [float(t.split() == r.split()) for t, r in zip(generation.texts, refs)]
        return MetricValue.mean_of(hits)


@dlmbench.hookimpl
def register_metrics(register) -> None:
    register(OracleNLL)
    register(OracleNLLAll)
    register(GrammarAccept)
    register(RuleKL)
    register(ExactMatch)
