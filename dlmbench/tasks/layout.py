"""Row layouts: how encoded documents and pairs become rows of exactly ``seq_len`` tokens.

* unconditional, ``packing: wrap`` (MDLM/Duo's OpenWebText layout, Sahoo et al. 2024,
  arXiv 2406.07524; ``kuleshov-group/mdlm@c112c52 dataloader.py``, ``_group_texts``):
  each document's tokens + EOS are concatenated and cut into blocks of ``seq_len - 2``;
  each block becomes ``[BOS] + block + [EOS]``; the incomplete last block is dropped.
* unconditional, ``packing: pad``: one document per row, truncated to ``seq_len - 1``
  tokens and EOS-padded (at least one EOS ends every row), no BOS (the grammar tasks'
  convention).
* conditional: ``[source | target]`` with ``prefix_len = int(seq_len * source_fraction)``
  (or ``seq_len - target_len``); each side is truncated to its width minus one and
  EOS-padded, so each side ends with at least one EOS (ELF's WMT14 and XSum layout,
  Hu et al. 2026, arXiv 2605.10938 section 4).

Builders take each split as an iterable of chunks, so a large corpus streams through.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlmbench.errors import ConfigError
from dlmbench.tasks.cache import Built
from dlmbench.tasks.rows import RowWriter
from dlmbench.tasks.tokenizers import encode_texts, spec_for
from dlmbench.tokenizer import TextTokenizer


class WrapPacker:
    """Streaming "wrap" packing: feed documents' ids, get full ``[BOS] block [EOS]`` rows.

    The stream is every document's ids followed by EOS; it is cut into blocks of
    ``seq_len - 2``. Ids that do not fill a last block stay in :attr:`remainder`.
    """

    def __init__(self, seq_len: int, bos_id: int, eos_id: int):
        if seq_len < 3:
            raise ConfigError(f"packing=wrap needs seq_len >= 3 (BOS + 1 token + EOS), got {seq_len}")
        self.seq_len, self.bos_id, self.eos_id = seq_len, bos_id, eos_id
        self.block = seq_len - 2
        self.buffer = np.empty(0, dtype=np.int64)
        self.stream_tokens = 0

    def add(self, docs: Iterable[Sequence[int]]) -> np.ndarray:
        docs = list(docs)
        total = sum(len(d) + 1 for d in docs)
        eos = (self.eos_id,)
        new = np.fromiter(itertools.chain.from_iterable(itertools.chain(d, eos) for d in docs),
                          dtype=np.int64, count=total)
        stream = np.concatenate([self.buffer, new]) if len(self.buffer) else new
        self.stream_tokens += total
        n = len(stream) // self.block
        rows = np.empty((n, self.seq_len), dtype=np.int64)
        rows[:, 0] = self.bos_id
        rows[:, -1] = self.eos_id
        rows[:, 1:-1] = stream[: n * self.block].reshape(n, self.block)
        self.buffer = stream[n * self.block:].copy()
        return rows

    @property
    def remainder(self) -> int:
        return len(self.buffer)


def pack_wrap(docs: Iterable[Sequence[int]], seq_len: int, bos_id: int, eos_id: int) -> tuple[np.ndarray, int]:
    """All rows of the wrap layout, and how many stream tokens the last block dropped."""
    packer = WrapPacker(seq_len, bos_id, eos_id)
    rows = packer.add(docs)
    return rows, packer.remainder


def pad_rows(docs: Sequence[Sequence[int]], width: int, eos_id: int) -> np.ndarray:
    """One row per document: its first ``width - 1`` ids, then EOS to ``width``."""
    if width < 2:
        raise ConfigError(f"a padded field needs at least 2 positions (a token and EOS), got {width}")
    out = np.full((len(docs), width), eos_id, dtype=np.int64)
    keep = width - 1
    for r, ids in enumerate(docs):
        k = min(len(ids), keep)
        if k:
            out[r, :k] = ids[:k]
    return out


def pair_rows(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], prefix_len: int,
              seq_len: int, eos_id: int) -> np.ndarray:
    """``[source EOS-padded to prefix_len | target EOS-padded to seq_len - prefix_len]``."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    return np.concatenate([pad_rows(sources, prefix_len, eos_id),
                           pad_rows(targets, seq_len - prefix_len, eos_id)], axis=1)


def prefix_len_for(seq_len: int, source_fraction: float, target_len: int | None) -> int:
    """The source width of a conditional layout; both sides need >= 2 positions."""
    prefix = seq_len - target_len if target_len is not None else int(seq_len * source_fraction)
    if prefix < 2 or seq_len - prefix < 2:
        how = f"target_len={target_len}" if target_len is not None else f"source_fraction={source_fraction}"
        raise ConfigError(
            f"seq_len={seq_len} with {how} gives a source of {prefix} and a target of "
            f"{seq_len - prefix} tokens; each side needs at least 2 (a token and EOS): "
            f"raise budget.seq_len or change task_options.{how.split('=')[0]}"
        )
    return prefix


@dataclass
class PairSplit:
    """Encoded pairs (of one split, or one chunk of it), with the original strings."""

    sources: list[list[int]]
    targets: list[list[int]]
    source_texts: list[str]
    target_texts: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def select(self, idx: Iterable[int]) -> "PairSplit":
        idx = list(idx)
        return PairSplit([self.sources[i] for i in idx], [self.targets[i] for i in idx],
                         [self.source_texts[i] for i in idx], [self.target_texts[i] for i in idx])

    @classmethod
    def encode(cls, tok: TextTokenizer, sources: list[str], targets: list[str]) -> "PairSplit":
        return cls(encode_texts(tok, sources), encode_texts(tok, targets), sources, targets)


def fit_filter(split: PairSplit, prefix_len: int, target_width: int) -> tuple[PairSplit, int]:
    """Only the pairs whose source and target fit untruncated (and the number dropped)."""
    keep = [i for i in range(len(split))
            if len(split.sources[i]) <= prefix_len - 1 and len(split.targets[i]) <= target_width - 1]
    return split.select(keep), len(split) - len(keep)


def build_unconditional(name: str, tok: TextTokenizer, train: Iterable[list[list[int]]],
                        valid: Iterable[list[list[int]]], seq_len: int, packing: str,
                        workdir: Path | None, info: dict[str, Any]) -> Built:
    """Rows of both splits in the ``wrap`` or ``pad`` layout; each split is an iterable
    of chunks (lists of documents' ids)."""
    arrays, lengths = {}, []
    for split, chunks in (("train", train), ("valid", valid)):
        writer = RowWriter(seq_len, workdir / f"{split}.bin" if workdir else None)
        n_docs = tokens = truncated = 0
        packer = WrapPacker(seq_len, tok.bos_id, tok.eos_id) if packing == "wrap" else None
        for chunk in chunks:
            lens = np.fromiter((len(d) for d in chunk), dtype=np.int64, count=len(chunk))
            lengths.append(lens)
            n_docs += len(chunk)
            tokens += int(lens.sum())
            if packer is not None:
                writer.write(packer.add(chunk))
            else:
                truncated += int((lens > seq_len - 1).sum())
                writer.write(pad_rows(chunk, seq_len, tok.eos_id))
        if packer is not None:
            info[f"{split}_dropped_tail_tokens"] = packer.remainder
        else:
            info[f"{split}_truncated_documents"] = truncated
        arrays[split] = writer.finish()
        info[f"{split}_documents"] = n_docs
        info[f"{split}_tokens"] = tokens
        info[f"{split}_rows"] = len(arrays[split])
        if len(arrays[split]) == 0:
            raise ConfigError(
                f"task {name!r}: the {split} split ({n_docs} documents, {tokens} tokens) does not "
                f"fill one sequence of seq_len={seq_len}; raise task_options.valid_documents / "
                f"max_documents or lower budget.seq_len"
            )
    all_lens = np.concatenate(lengths) if lengths else np.zeros(0)
    info.update(packing=packing, vocab_size=tok.vocab_size,
                median_document_tokens=float(np.median(all_lens)) if len(all_lens) else 0.0)
    return Built(name, spec_for(tok, seq_len), tok, arrays, info=info)


def build_conditional(name: str, tok: TextTokenizer, train: Iterable[PairSplit], valid: Iterable[PairSplit],
                      evals: PairSplit, seq_len: int, prefix_len: int, drop_overlong: bool,
                      workdir: Path | None, info: dict[str, Any]) -> Built:
    """Rows ``[source | target]`` of train/valid, and the evaluation prompts.

    ``train``/``valid`` are iterables of :class:`PairSplit` chunks. ``evals`` are the
    chosen prompts (filter them before choosing when ``drop_overlong``); only
    train/valid are filtered here.
    """
    tw = seq_len - prefix_len
    arrays: dict[str, np.ndarray] = {}
    src_lens, tgt_lens = [], []
    for split, chunks in (("train", train), ("valid", valid)):
        writer = RowWriter(seq_len, workdir / f"{split}.bin" if workdir else None)
        dropped = trunc_s = trunc_t = 0
        for chunk in chunks:
            src_lens.append(np.fromiter((len(x) for x in chunk.sources), dtype=np.int64, count=len(chunk)))
            tgt_lens.append(np.fromiter((len(x) for x in chunk.targets), dtype=np.int64, count=len(chunk)))
            if drop_overlong:
                chunk, d = fit_filter(chunk, prefix_len, tw)
                dropped += d
            trunc_s += sum(len(x) > prefix_len - 1 for x in chunk.sources)
            trunc_t += sum(len(x) > tw - 1 for x in chunk.targets)
            if len(chunk):
                writer.write(pair_rows(chunk.sources, chunk.targets, prefix_len, seq_len, tok.eos_id))
        arrays[split] = writer.finish()
        info[f"{split}_pairs"] = len(arrays[split])
        info[f"{split}_truncated_sources"] = trunc_s
        info[f"{split}_truncated_targets"] = trunc_t
        if drop_overlong:
            info[f"{split}_dropped_overlong"] = info.get(f"{split}_dropped_overlong", 0) + dropped
        if len(arrays[split]) == 0:
            raise ConfigError(f"task {name!r}: the {split} split is empty; check the data and "
                              f"task_options (valid_documents, max_documents, drop_overlong)")
    arrays["eval_prefixes"] = pad_rows(evals.sources, prefix_len, tok.eos_id)
    s, t = (np.concatenate(x) if x else np.zeros(0) for x in (src_lens, tgt_lens))
    info.update(prefix_len=prefix_len, target_len=tw, vocab_size=tok.vocab_size, eval_pairs=len(evals),
                eval_truncated_sources=sum(len(x) > prefix_len - 1 for x in evals.sources),
                median_source_tokens=float(np.median(s)) if len(s) else 0.0,
                median_target_tokens=float(np.median(t)) if len(t) else 0.0)
    return Built(name, spec_for(tok, seq_len, prefix_len), tok, arrays,
                 references=list(evals.target_texts), sources=list(evals.source_texts), info=info)
