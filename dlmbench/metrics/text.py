"""Text metrics: ``unigram-entropy``, ``bleu``, ``rouge`` (and ``gen-ppl``, registered here).

Each follows a reference protocol and records its settings in ``details`` so that a
number is never separated from how it was computed:

* ``unigram-entropy``: Duo's ``record_entropy`` (s-sahoo/duo@7c9b498 ``metrics.py``), per-sample
  Shannon entropy of the model's own ids; ``ids=evaluator`` is ELF's variant (the
  evaluator tokenizer's re-tokenized ids, lillian039/ELF@b29d883 ``src/utils/metrics_utils.py``
  L221-229). By default the ids are the continuation cut before its first EOS;
  ``span=raw`` (with ``ids=model``) takes the model's whole row after the prefix, EOS
  and whatever follows it included, as Duo counts it (``metrics.py`` L155-161 over the
  sampled rows, ``main.py`` L121-123). ``skip_empty=True`` leaves blank texts out, as ELF
  scores only non-blank samples (``src/generation.py`` L234-245); otherwise a blank
  sample counts with entropy 0.
* ``bleu``: SacreBLEU corpus BLEU, the standard cased signature by default; ELF's
  variant is ``lowercase=True, use_effective_order=True`` (ELF's ``metrics_utils.py``).
* ``rouge``: ``rouge_score`` rouge1/rouge2/rougeL with the Porter stemmer, per-example
  F1 x 100 averaged with its standard error (ELF's ``metrics_utils.py``): by default
  the sample standard deviation over sqrt(n); ``stderr=population`` divides the variance
  by n instead of n-1, as ELF's ``statistics.pstdev`` does (``metrics_utils.py`` L18-23).
* ``gen-ppl``: generative perplexity under an evaluator LM, see
  :mod:`dlmbench.metrics.genppl`.

sacrebleu, rouge_score and transformers are imported inside ``compute`` so that loading
the plugin (and ``dlmbench --help``) stays fast.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import ClassVar, Literal, Sequence

from pydantic import Field, model_validator

import dlmbench
from dlmbench.data import Generation
from dlmbench.errors import ConfigError
from dlmbench.metric import Metric, MetricConfig, MetricValue
from dlmbench.metrics.genppl import GenPPL
from dlmbench.metrics.mauve import Mauve
from dlmbench.task import TaskData


def unigram_entropy(ids: Sequence[int]) -> float:
    """Shannon entropy (nats) of the empirical distribution of ``ids``, with multiplicity.

    ``H = -sum_v (c_v / n) log(c_v / n)``; 0 for an empty or constant sequence.
    """
    n = len(ids)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log(c / n) for c in Counter(ids).values())


class EntropyConfig(MetricConfig):
    ids: Literal["model", "evaluator"] = Field(
        "model", description="'model': the sample's own ids (Duo); 'evaluator': re-tokenized (ELF)"
    )
    evaluator: str = Field("gpt2-large", description="tokenizer for ids='evaluator' (hub id or path)")
    max_length: int | None = Field(
        None, description="ids='evaluator' truncation; None: the tokenizer's model_max_length"
    )
    span: Literal["continuation", "raw"] = Field(
        "continuation", description="'raw': the model's whole row after the prefix, EOS included (Duo)"
    )
    skip_empty: bool = Field(False, description="leave blank samples out (ELF)")

    added: ClassVar[tuple[str, ...]] = ("span", "skip_empty")

    @model_validator(mode="after")
    def _raw_needs_model_ids(self) -> "EntropyConfig":
        if self.span == "raw" and self.ids != "model":
            raise ValueError("span='raw' counts the model's own row; it needs ids='model', not ids='evaluator'")
        return self


class UnigramEntropy(Metric):
    name = "unigram-entropy"
    higher_is_better = True
    description = (
        "Per-sample unigram entropy (nats) of the generated continuation, averaged over "
        "samples (Duo protocol). A diversity diagnostic: read it next to a quality metric "
        "(Gen PPL), since degenerate repetitive samples lower it and random tokens raise it."
    )
    Config = EntropyConfig

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        cfg = self.config
        keep = [i for i, t in enumerate(generation.texts) if t.strip() or not cfg.skip_empty]
        if cfg.ids == "model" and cfg.span == "raw":
            samples = [generation.ids[i, task.spec.prefix_len :].tolist() for i in keep]
        elif cfg.ids == "model":
            samples = [generation.tokens[i] for i in keep]
        else:
            from dlmbench.metrics.genppl import load_tokenizer, retokenize
            from dlmbench.metrics.proxy import resolve_evaluator

            evaluator = resolve_evaluator(cfg.evaluator, self.evaluator_task(task), self.context)
            tok = load_tokenizer(evaluator, self.context.offline)
            limit = cfg.max_length
            if limit is None:  # the tokenizer's own, unless absent or transformers' "no limit" (1e30)
                own = getattr(tok, "model_max_length", None)
                limit = own if isinstance(own, int) and own < 1_000_000 else None
            samples = retokenize(tok, [generation.texts[i] for i in keep], limit)
        values = [unigram_entropy(s) for s in samples]
        details = {
            "ids": cfg.ids, "span": cfg.span, "skip_empty": cfg.skip_empty,
            "skipped_empty": len(generation.texts) - len(keep), "empty": sum(1 for s in samples if not s),
        }
        if cfg.ids == "evaluator":
            details["evaluator"] = cfg.evaluator
        return MetricValue.mean_of(values, **details)


def _references(generation: Generation, task: TaskData, metric: str) -> list[str]:
    refs = generation.references if generation.references is not None else task.references
    if refs is None:
        raise ConfigError(f"metric {metric!r} needs references; task {task.name!r} has none")
    if len(refs) != len(generation.texts):
        raise ValueError(f"{metric}: {len(generation.texts)} samples but {len(refs)} references")
    return list(refs)


class BLEUConfig(MetricConfig):
    lowercase: bool = Field(False, description="case-insensitive (ELF uses True)")
    use_effective_order: bool = Field(False, description="drop n-gram orders with no matches (ELF: True)")
    tokenize: str = Field("13a", description="sacrebleu tokenizer")


class BLEU(Metric):
    name = "bleu"
    higher_is_better = True
    description = (
        "SacreBLEU corpus BLEU (0-100) of the samples against the references; the "
        "signature is in details (default: the standard cased 13a signature)."
    )
    Config = BLEUConfig

    def applies_to(self, task: TaskData) -> bool:
        return task.references is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        from sacrebleu.metrics import BLEU as SacreBLEU

        refs = _references(generation, task, self.name)
        cfg = self.config
        bleu = SacreBLEU(
            lowercase=cfg.lowercase, tokenize=cfg.tokenize, effective_order=cfg.use_effective_order
        )
        score = bleu.corpus_score(list(generation.texts), [refs])
        return MetricValue(
            float(score.score),
            None,
            {
                "signature": str(bleu.get_signature()),
                "precisions": [float(p) for p in score.precisions],
                "bp": float(score.bp),
                "sys_len": int(score.sys_len),
                "ref_len": int(score.ref_len),
                "n": len(refs),
            },
        )


class ROUGEConfig(MetricConfig):
    use_stemmer: bool = Field(True, description="Porter stemming (the rouge_score option)")
    stderr: Literal["sample", "population"] = Field(
        "sample", description="standard deviation under the stderr: n-1 ('sample') or n ('population', ELF)"
    )

    added: ClassVar[tuple[str, ...]] = ("stderr",)


def _mean_and_stderr(values: list[float], stderr: str) -> MetricValue:
    """:meth:`MetricValue.mean_of`, or with the population standard deviation (divide by
    n, so a single value has stderr 0), as lillian039/ELF@b29d883
    ``src/utils/metrics_utils.py`` L18-23 computes it."""
    mv = MetricValue.mean_of(values)
    n = len(values)
    if stderr == "population" and n > 0:
        mv.stderr = math.sqrt(sum((v - mv.value) ** 2 for v in values) / n / n)
    return mv


class ROUGE(Metric):
    name = "rouge"
    higher_is_better = True
    description = (
        "ROUGE-L F1 x 100 (rouge_score, stemmed), averaged per example with its standard "
        "error; ROUGE-1/2/L and their stderrs are in details."
    )
    Config = ROUGEConfig
    kinds = ("rouge1", "rouge2", "rougeL")

    def applies_to(self, task: TaskData) -> bool:
        return task.references is not None

    def compute(self, generation: Generation, task: TaskData) -> MetricValue:
        from rouge_score import rouge_scorer

        refs = _references(generation, task, self.name)
        scorer = rouge_scorer.RougeScorer(list(self.kinds), use_stemmer=self.config.use_stemmer)
        per_kind: dict[str, list[float]] = {k: [] for k in self.kinds}
        for hyp, ref in zip(generation.texts, refs):
            scores = scorer.score(ref, hyp)  # (target, prediction)
            for k in self.kinds:
                per_kind[k].append(100.0 * scores[k].fmeasure)
        details = {}
        for k in self.kinds:
            mv = _mean_and_stderr(per_kind[k], self.config.stderr)
            details[k], details[f"{k}_stderr"] = mv.value, mv.stderr
        out = MetricValue.mean_of(per_kind["rougeL"], **details)
        out.stderr = details["rougeL_stderr"]
        out.details["use_stemmer"] = self.config.use_stemmer
        out.details["stderr"] = self.config.stderr
        return out


@dlmbench.hookimpl
def register_metrics(register):
    register(UnigramEntropy)
    register(BLEU)
    register(ROUGE)
    register(GenPPL)
    register(Mauve)
