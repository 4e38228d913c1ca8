"""dlmbench's offline tasks: the English-like grammar, its translation, its summary.

``grammar`` (the default task) is unconditional: one sentence per sequence,
``w1 ... wn EOS EOS ...`` (EOS padding, the ELF convention). Sentences longer than
``seq_len - 1`` words are rejected while sampling, so the data distribution is the
grammar conditioned on ``len <= seq_len - 1``; :class:`GrammarOracle` scores exactly
that distribution.

``grammar-translate`` and ``grammar-summarize`` are conditional:
``[source words, EOS-padded to prefix_len | target words, EOS-padded]`` with
``prefix_len = seq_len // 2``; a pair is rejected unless both sides fit with at least
one EOS after each. Their evaluation sources are held out: none occurs as a training
source, and none repeats.

Everything is a deterministic function of ``(config, seq_len, num_eval, seed)``:
numpy's PCG64 streams are seeded with ``(seed, split)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from pydantic import Field

import dlmbench
from dlmbench.context import RunContext
from dlmbench.data import DataSpec
from dlmbench.errors import ConfigError
from dlmbench.task import Task, TaskConfig, TaskData
from dlmbench.tasks import english
from dlmbench.tasks.pcfg import PCFG, GrammarOracle, Tree, paused_gc
from dlmbench.tokenizer import EOS_ID, TextTokenizer

TRAIN, VALID, EVAL = 0, 1, 2  # the seed streams of the splits
MIN_FIT = 0.25  # refuse lengths that reject most of the grammar (slow, and a skewed task)
MAX_SEQ_LEN = 2048  # P(a sentence longer than 256 words) is below 1e-15; longer only wastes time


@dataclass(frozen=True)
class TransductionOracle:
    """What a conditional grammar task knows exactly: the source grammar, the
    deterministic tree transform that makes references, and the length caps."""

    grammar: PCFG
    kind: str  # "translate" or "summarize"
    transform: Callable[[Tree], list[str]]
    max_source_words: int
    max_target_words: int


@lru_cache(maxsize=2)
def _tokenizer(with_target: bool) -> TextTokenizer:
    words = english.vocabulary()
    if with_target:
        words = words + sorted(english.target_lexicon().values())
    return TextTokenizer.word_level(words)


def _encode(rows: list[list[str]], width: int, ids: dict[str, int]) -> np.ndarray:
    """Word rows -> ``(len(rows), width)`` int64, EOS-padded."""
    out = np.full((len(rows), width), EOS_ID, dtype=np.int64)
    for r, words in enumerate(rows):
        out[r, : len(words)] = [ids[w] for w in words]
    return out


def _check_fit(max_words: int, what: str, seq_len: int) -> None:
    if seq_len > MAX_SEQ_LEN:
        raise ConfigError(
            f"budget.seq_len = {seq_len}: the grammar tasks serve at most {MAX_SEQ_LEN} tokens (their exact "
            f"length tables grow with the square of the length, and no sentence comes near that); "
            f"lower --seq-len"
        )
    p_fit = english.english_grammar().length_distribution(max(max_words, 0)).sum()
    if p_fit < MIN_FIT:
        raise ConfigError(
            f"seq_len={seq_len} is too short for the grammar tasks: only {p_fit:.1%} of "
            f"sentences fit in {max_words} {what} words; use a longer seq_len"
        )


# unconditional ---------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _sentences(n: int, max_words: int, seed: int, split: int) -> tuple[tuple[list[str], ...], int]:
    """``n`` sentences of at most ``max_words`` words, and how many were rejected."""
    it = english.english_grammar().iter_sentences(np.random.default_rng((seed, split)))
    kept: list[list[str]] = []
    rejected = 0
    while len(kept) < n:
        words = next(it)
        if len(words) <= max_words:
            kept.append(words)
        else:
            rejected += 1
    return tuple(kept), rejected


class GrammarConfig(TaskConfig):
    train_sentences: int = Field(50_000, ge=1, description="training sequences")
    valid_sentences: int = Field(2_000, ge=1, description="validation sequences")


class GrammarTask(Task[GrammarConfig]):
    """Sentences of a known PCFG: exact NLL, grammaticality and length statistics."""

    name = "grammar"
    Config = GrammarConfig
    conditional = False
    default_metrics = ("oracle-nll-all", "oracle-nll", "grammar-accept", "rule-kl", "unigram-entropy")

    def load(self, seq_len: int, num_eval: int, seed: int, context: RunContext | None = None) -> TaskData:
        """Generated in memory (fast, exact): no cache, so ``context`` is not needed."""
        cfg = self.config
        _check_fit(seq_len - 1, "sentence", seq_len)
        oracle = GrammarOracle(english.english_grammar(), seq_len - 1)
        tok = _tokenizer(False)
        ids = tok.backend.get_vocab()
        train, rejected = _sentences(cfg.train_sentences, oracle.max_len, seed, TRAIN)
        valid, _ = _sentences(cfg.valid_sentences, oracle.max_len, seed, VALID)
        spec = DataSpec(tok.vocab_size, seq_len, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id)
        n = np.arange(oracle.max_len + 1)
        info = {
            "grammar": "english",
            "vocab_words": len(english.vocabulary()),
            "max_words": oracle.max_len,
            "p_fit": oracle.p_fit,
            "mean_words": float((n * oracle.length_probs).sum() / oracle.p_fit),
            "entropy_rate_nats": oracle.entropy_rate(),
            "rejected_train": rejected,
        }
        return TaskData(
            name=self.name,
            spec=spec,
            tokenizer=tok,
            train=torch.from_numpy(_encode(list(train), seq_len, ids)),
            valid=torch.from_numpy(_encode(list(valid), seq_len, ids)),
            oracle=oracle,
            info=info,
        )


# conditional -----------------------------------------------------------------------------
Pairs = tuple[tuple[list[str], list[str]], ...]


@lru_cache(maxsize=6)  # train, valid and eval of the last two loads
def _pairs(
    kind: str, n: int, src_max: int, tgt_max: int, seed: int, split: int,
    exclude: frozenset[tuple[str, ...]] = frozenset(), unique: bool = False,
) -> tuple[Pairs, int]:
    """``n`` (source, target) word pairs that fit, and how many draws were rejected."""
    transform = _TRANSFORMS[kind]
    it = english.english_grammar().iter_trees(np.random.default_rng((seed, split)))
    kept: list[tuple[list[str], list[str]]] = []
    seen: set[tuple[str, ...]] = set()
    rejected, limit = 0, 1000 * n + 100_000
    with paused_gc():
        while len(kept) < n:
            tree = next(it)
            src = tree.words()
            key = tuple(src)
            if len(src) > src_max or key in exclude or (unique and key in seen):
                rejected += 1
            else:
                tgt = transform(tree)
                if len(tgt) > tgt_max:
                    rejected += 1
                else:
                    kept.append((src, tgt))
                    seen.add(key)
            if rejected > limit:
                raise ConfigError(
                    f"could not draw {n} distinct held-out {kind} sources; lower num_eval"
                )
    return tuple(kept), rejected


_TRANSFORMS: dict[str, Callable[[Tree], list[str]]] = {
    "translate": english.translate,
    "summarize": english.summarize,
}


class TransductionConfig(TaskConfig):
    train_sentences: int = Field(50_000, ge=1, description="training pairs")
    valid_sentences: int = Field(1_000, ge=1, description="validation pairs")


class _GrammarTransductionTask(Task[TransductionConfig]):
    """A source sentence of the grammar and its deterministic transform."""

    Config = TransductionConfig
    conditional = True
    default_metrics = ("exact-match", "bleu", "rouge")
    kind = ""

    def load(self, seq_len: int, num_eval: int, seed: int, context: RunContext | None = None) -> TaskData:
        """Generated in memory (fast, exact): no cache, so ``context`` is not needed."""
        cfg = self.config
        grammar = english.english_grammar()
        prefix_len = seq_len // 2
        src_max, tgt_max = prefix_len - 1, seq_len - prefix_len - 1
        _check_fit(src_max, "source", seq_len)
        tok = _tokenizer(self.kind == "translate")
        ids = tok.backend.get_vocab()
        train, rejected = _pairs(self.kind, cfg.train_sentences, src_max, tgt_max, seed, TRAIN)
        valid, _ = _pairs(self.kind, cfg.valid_sentences, src_max, tgt_max, seed, VALID)
        held: Pairs = ()
        if num_eval > 0:
            seen = frozenset(tuple(s) for s, _ in train)
            held, _ = _pairs(self.kind, num_eval, src_max, tgt_max, seed, EVAL, seen, True)

        def rows(pairs: Pairs) -> torch.Tensor:
            src = _encode([s for s, _ in pairs], prefix_len, ids)
            tgt = _encode([t for _, t in pairs], seq_len - prefix_len, ids)
            return torch.from_numpy(np.concatenate([src, tgt], axis=1))

        spec = DataSpec(
            tok.vocab_size, seq_len, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, prefix_len
        )
        oracle = TransductionOracle(grammar, self.kind, _TRANSFORMS[self.kind], src_max, tgt_max)
        return TaskData(
            name=self.name,
            spec=spec,
            tokenizer=tok,
            train=rows(train),
            valid=rows(valid),
            eval_prefixes=torch.from_numpy(_encode([s for s, _ in held], prefix_len, ids)),
            references=[" ".join(t) for _, t in held],
            sources=[" ".join(s) for s, _ in held],
            oracle=oracle,
            info={
                "grammar": "english",
                "transform": self.kind,
                "max_source_words": src_max,
                "max_target_words": tgt_max,
                "rejected_train": rejected,
                "eval_sources_disjoint_from_train": True,
            },
        )


class GrammarTranslateTask(_GrammarTransductionTask):
    """English-like source -> an invented SOV language (reordering + word lexicon)."""

    name = "grammar-translate"
    kind = "translate"


class GrammarSummarizeTask(_GrammarTransductionTask):
    """English-like source -> its core clause (no adjectives, PPs, relatives, adverbs)."""

    name = "grammar-summarize"
    kind = "summarize"


@dlmbench.hookimpl
def register_tasks(register: Callable[[type[Task[Any]]], None]) -> None:
    register(GrammarTask)
    register(GrammarTranslateTask)
    register(GrammarSummarizeTask)
