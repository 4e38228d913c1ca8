"""Exact metrics of the grammar tasks: the true NLL, grammaticality, exact match.

The grammar task's data distribution is known (a PCFG conditioned on length), so a
sample's quality needs no judge model: ``oracle-nll`` is the true negative
log-likelihood per token of the generated sentences, ``grammar-accept`` the fraction of
samples that are sentences at all. ``exact-match`` serves the conditional tasks, whose
references are deterministic.
"""

from __future__ import annotations

import math

import dlmbench
from dlmbench.data import Generation
from dlmbench.metric import Metric, MetricValue
from dlmbench.task import TaskData
from dlmbench.tasks.pcfg import GrammarOracle


def _grammar_oracle(task: TaskData) -> GrammarOracle | None:
    oracle = task.oracle
    return oracle if isinstance(oracle, GrammarOracle) and not task.spec.conditional else None


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
        oracle = _grammar_oracle(task)
        assert oracle is not None, "oracle-nll needs the grammar task"
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
            return MetricValue(float("nan"), None, {**details, "n": 0})
        per_sentence = MetricValue.mean_of(nll)
        return MetricValue(
            sum(nll) / sum(tokens),
            _ratio_stderr(nll, tokens),
            {
                **details,
                "n": len(nll),
                "nll_per_sentence": per_sentence.value,
                "nll_per_sentence_stderr": per_sentence.stderr,
                "tokens": int(sum(tokens)),
            },
        )


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
        oracle = _grammar_oracle(task)
        assert oracle is not None, "grammar-accept needs the grammar task"
        words = sample_words(generation, task)
        ok = [1.0 if w is not None and oracle.accepts(w) else 0.0 for w in words]
        return MetricValue.mean_of(
            ok, no_eos=sum(w is None for w in words), max_words=oracle.max_len
        )


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
    register(GrammarAccept)
    register(ExactMatch)
