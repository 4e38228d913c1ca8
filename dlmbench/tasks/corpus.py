"""The two tasks every real-text source feeds: a corpus (unconditional) and a parallel
corpus (conditional), with the splitting, hold-out and prompt selection they share.

A task over a source (:mod:`dlmbench.tasks.sources`) names the source, the tokenizer
(:mod:`dlmbench.tasks.tokenizers`) and which of the source's splits plays which part;
the rules are the same for local files, SWORD modules and Hugging Face datasets:

* corpus: the first ``max_documents`` documents of the training split; the last
  ``valid_documents`` of them are the validation split (as OpenWebText's is its last
  100k documents in MDLM/Duo, ``kuleshov-group/mdlm@c112c52 dataloader.py``), the rest
  is training data. Unset, it is 10% of them, at most the task's ``valid_cap``.
* parallel corpus: training pairs are the first ``max_documents`` of the training
  split. Validation pairs are the source's validation split (its first
  ``valid_documents``) when it has one, else the last ``valid_documents`` training
  pairs (unset: :meth:`ParallelCorpusTask.default_holdout`). Pairs with an empty side
  are skipped in both. The ``num_eval`` evaluation prompts are pairs of the source's
  evaluation split, else of the validation split, chosen by ``seed`` and kept in order
  (after dropping those that would be truncated when ``drop_overlong``); their
  ``references``/``sources`` are the original strings.
* a ``bpe`` tokenizer is trained on the training split only (both sides for pairs).
* a model may read the task through its own tokenizer (``load(..., tokenizer=request)``:
  the request's name, else the task's, with the request's mask rule); every view of one
  source shares its ``text_fingerprint``.

Rows are laid out by :mod:`dlmbench.tasks.layout`, in chunks of ``BATCH`` items, so a
large dataset streams through; built data are cached under ``context.tasks``
(:mod:`dlmbench.tasks.cache`; ``cache: false`` turns it off).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field

from dlmbench.context import RunContext
from dlmbench.errors import ConfigError
from dlmbench.task import Task, TaskConfig, TaskData, task_context
from dlmbench.tasks.cache import Built, cached_build
from dlmbench.tasks.layout import PairSplit, build_conditional, build_unconditional, fit_filter, prefix_len_for
from dlmbench.tasks.sources import TRAIN, Document, Pair, Source, Split
from dlmbench.tasks.tokenizers import BPE, TokenizerChoice, encode_texts
from dlmbench.tokenizer import TokenizerRequest

BATCH = 10_000  # items encoded per chunk
NOT_IN_KEY = {"cache", "hf_cache_dir"}  # where data are cached does not change them
TOKENIZER_FIELDS = {"tokenizer", "vocab_size"}  # what a model's tokenizer request replaces
VALID_HELP = ("held-out documents: the last N of the corpus (None: 10% of it, at most "
              "the task's cap)")

T = TypeVar("T")


class CorpusConfig(TaskConfig):
    """Options of every corpus task."""

    vocab_size: int = Field(4096, ge=262, description="BPE vocabulary, 5 specials and 256 bytes included")
    packing: Literal["wrap", "pad"] = Field("wrap", description="wrap: MDLM/Duo packing; pad: one document per row")
    valid_documents: int | None = Field(None, ge=1, description=VALID_HELP)
    max_documents: int | None = Field(None, ge=2, description="use only the first N documents (CPU runs)")
    cache: bool = Field(True, description="cache the built tokenizer and tensors on disk")


class ParallelCorpusConfig(TaskConfig):
    """Options of every parallel-corpus task."""

    vocab_size: int = Field(4096, ge=262, description="BPE vocabulary over both sides")
    source_fraction: float = Field(0.5, gt=0, lt=1, description="prefix_len = int(seq_len * source_fraction)")
    target_len: int | None = Field(None, ge=2, description="if set, prefix_len = seq_len - target_len")
    drop_overlong: bool = Field(False, description="drop pairs whose source or target would be truncated")
    valid_documents: int | None = Field(None, ge=1, description=VALID_HELP)
    max_documents: int | None = Field(None, ge=2, description="use only the first N pairs (CPU runs)")
    cache: bool = Field(True, description="cache the built tokenizer and tensors on disk")


CorpusConfigT = TypeVar("CorpusConfigT", bound=CorpusConfig)
ParallelConfigT = TypeVar("ParallelConfigT", bound=ParallelCorpusConfig)


# --- the shared rules ----------------------------------------------------------------------
def held_out(valid_documents: int | None, n: int, default: int, what: str, unit: str) -> int:
    """How many items the validation split takes (the last ones of ``n``)."""
    n_valid = default if valid_documents is None else valid_documents
    if n_valid >= n:
        given, fix = ((f"valid_documents={n_valid}", "lower task_options.valid_documents")
                      if valid_documents is not None else
                      (f"holding out {n_valid} {unit} (valid_documents unset)",
                       "set task_options.valid_documents, lower budget.num_samples"))
        raise ConfigError(f"{what}: {given} leaves no training data (the training split has {n} "
                          f"{unit}); {fix}, or use more data")
    return n_valid


def choose_eval(n_valid: int, num_eval: int, seed: int, what: str) -> np.ndarray:
    """Indices of ``num_eval`` evaluation pairs among ``n_valid``, seeded, in order."""
    if num_eval > n_valid:
        raise ConfigError(
            f"{what}: {num_eval} evaluation prompts were asked for (budget.num_samples) but the "
            f"held-out split has {n_valid}; lower budget.num_samples or raise "
            f"task_options.valid_documents"
        )
    if num_eval == n_valid:
        return np.arange(n_valid)
    rng = np.random.default_rng([seed, 0xE7A1])
    return np.sort(rng.choice(n_valid, size=num_eval, replace=False))


def chunked(items: Iterable[T], size: int = BATCH) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def split_named(task: str, splits: Mapping[str, Split[T]], name: str) -> Split[T]:
    if name not in splits:
        raise ConfigError(f"task {task!r}: the data have no {name!r} split (they have "
                          f"{', '.join(splits)}); set the task's *_split option or data_files")
    return splits[name]


def source_key(task: Task[Any], seq_len: int, source: Source[Any], tokenizer: TokenizerChoice,
               **extra: int) -> dict[str, Any]:
    """Everything built data depend on (:mod:`dlmbench.tasks.cache`)."""
    return {"task": task.name, "argument": task.argument, "seq_len": seq_len,
            "config": task.config.model_dump(exclude=NOT_IN_KEY), "source": source.stamp(),
            "tokenizer": tokenizer.stamp(), **extra}


def text_fingerprint(task: Task[Any], seq_len: int, source: Source[Any], **extra: Any) -> str:
    """The key of the text a task provides, without its tokenizer: the same for every view
    (a conditional task adds its evaluation references: ``drop_overlong`` may choose other
    prompts through another tokenizer, and those views then do not share a table)."""
    from dlmbench.tasks.cache import cache_key

    return cache_key({"task": task.name, "argument": task.argument, "seq_len": seq_len,
                      "config": task.config.model_dump(exclude=NOT_IN_KEY | TOKENIZER_FIELDS),
                      "source": source.stamp(), **extra})


def requested(own: TokenizerChoice, request: TokenizerRequest | None) -> TokenizerChoice:
    """The task's tokenizer as a model's request changes it (its name, its mask rule)."""
    if request is None:
        return own
    return TokenizerChoice(request.name or own.name, own.vocab_size, request.mask)


def _non_empty(pairs: Iterable[Pair]) -> Iterator[Pair]:
    return (p for p in pairs if p[0].strip() and p[1].strip())


# --- the tasks -------------------------------------------------------------------------------
class CorpusTask(Task[CorpusConfigT]):
    """An unconditional task over a source of documents."""

    conditional = False
    default_metrics = ("gen-ppl", "unigram-entropy")
    reads_text = True
    valid_cap: ClassVar[int] = 1000

    def source(self) -> Source[Document]:
        raise NotImplementedError

    def tokenizer(self) -> TokenizerChoice:
        return TokenizerChoice(BPE, self.config.vocab_size)

    def split_name(self) -> str:
        """The source's split the corpus is read from."""
        return TRAIN

    def default_holdout(self, n: int) -> int:
        return max(min(self.valid_cap, n // 10), 1)

    def load(self, seq_len: int, num_eval: int, seed: int, context: RunContext | None = None,
             tokenizer: TokenizerRequest | None = None) -> TaskData:
        context = task_context(context)
        source, choice = self.source(), requested(self.tokenizer(), tokenizer)
        data = cached_build(self.name, source_key(self, seq_len, source, choice),
                            lambda work: self._build(source, choice, seq_len, work, context),
                            context.tasks if self.config.cache else None)
        data.text_fingerprint = text_fingerprint(self, seq_len, source)
        return data

    def _build(self, source: Source[Document], tokenizer: TokenizerChoice, seq_len: int,
               workdir: Path | None, context: RunContext) -> Built:
        cfg = self.config
        pretrained = tokenizer.pretrained(self.name, context)
        docs = split_named(self.name, source.open(context), self.split_name())
        n = len(docs) if cfg.max_documents is None else min(len(docs), cfg.max_documents)
        n_valid = held_out(cfg.valid_documents, n, self.default_holdout(n), f"task {self.name!r}", "documents")
        train, valid = docs.window(0, n - n_valid), docs.window(n - n_valid, n)
        tok = tokenizer.fit(pretrained, train)

        def ids(split: Split[Document]) -> Iterator[list[list[int]]]:
            return (encode_texts(tok, chunk) for chunk in chunked(split))

        info = {**source.describe(), "documents": n, "tokenizer": tokenizer.name}
        return build_unconditional(self.name, tok, ids(train), ids(valid), seq_len, cfg.packing, workdir, info)


class ParallelCorpusTask(Task[ParallelConfigT]):
    """A conditional task over a source of (source, target) pairs."""

    conditional = True
    default_metrics = ("bleu", "rouge")
    reads_text = True
    valid_cap: ClassVar[int] = 1000

    def source(self) -> Source[Pair]:
        raise NotImplementedError

    def tokenizer(self) -> TokenizerChoice:
        return TokenizerChoice(BPE, self.config.vocab_size)

    def split_names(self) -> tuple[str, str, str]:
        """The source's training, validation and evaluation splits (the last two may be absent)."""
        return TRAIN, "validation", "test"

    def default_holdout(self, n: int, num_eval: int) -> int:
        """Validation pairs held out of ``n`` training pairs when ``valid_documents`` is unset."""
        return max(min(self.valid_cap, n // 10), num_eval, 1)

    def load(self, seq_len: int, num_eval: int, seed: int, context: RunContext | None = None,
             tokenizer: TokenizerRequest | None = None) -> TaskData:
        context = task_context(context)
        prefix_len = prefix_len_for(seq_len, self.config.source_fraction, self.config.target_len)
        source, choice = self.source(), requested(self.tokenizer(), tokenizer)
        key = source_key(self, seq_len, source, choice, num_eval=num_eval, seed=seed)
        data = cached_build(self.name, key,
                            lambda work: self._build(source, choice, seq_len, prefix_len, num_eval, seed,
                                                     work, context),
                            context.tasks if self.config.cache else None)
        data.text_fingerprint = text_fingerprint(self, seq_len, source, num_eval=num_eval, seed=seed,
                                                 references=data.references)
        return data

    def _build(self, source: Source[Pair], tokenizer: TokenizerChoice, seq_len: int, prefix_len: int,
               num_eval: int, seed: int, workdir: Path | None, context: RunContext) -> Built:
        cfg, what = self.config, f"task {self.name!r}"
        pretrained = tokenizer.pretrained(self.name, context)
        splits = source.open(context)
        train_name, valid_name, eval_name = self.split_names()
        train = split_named(self.name, splits, train_name)
        n = len(train) if cfg.max_documents is None else min(len(train), cfg.max_documents)
        carved = valid_name not in splits
        if carved:  # hold out the last pairs of the training split
            n_valid = held_out(cfg.valid_documents, n, self.default_holdout(n, num_eval), what, "pairs")
            train, valid = train.window(0, n - n_valid), train.window(n - n_valid, n)
        else:
            train, valid = train.window(0, n), splits[valid_name]
            if cfg.valid_documents is not None:
                valid = valid.window(0, min(len(valid), cfg.valid_documents))
        tok = tokenizer.fit(pretrained, (text for chunk in chunked(_non_empty(train))
                                         for side in zip(*chunk) for text in side))

        def encoded(split: Split[Pair]) -> Iterator[PairSplit]:
            for chunk in chunked(_non_empty(split)):
                yield PairSplit.encode(tok, [s for s, _ in chunk], [t for _, t in chunk])

        pool_pairs = list(splits[eval_name] if eval_name in splits else valid)  # empty sides kept
        pool = PairSplit.encode(tok, [s for s, _ in pool_pairs], [t for _, t in pool_pairs])
        info: dict[str, Any] = {**source.describe(), "pairs": n, "tokenizer": tokenizer.name,
                                "valid_carved_from_train": carved,
                                "eval_split": eval_name if eval_name in splits else "validation"}
        if cfg.drop_overlong:
            pool, info["eval_pool_dropped_overlong"] = fit_filter(pool, prefix_len, seq_len - prefix_len)
        evals = pool.select(choose_eval(len(pool), num_eval, seed, what))
        return build_conditional(self.name, tok, encoded(train), encoded(valid), evals, seq_len, prefix_len,
                                 cfg.drop_overlong, workdir, info)
