"""Real-text tasks: local corpora (``text``, ``pairs``) and the SWORD Bible modules.

Task ids (``--task``)
  ``text:PATH``      unconditional; PATH is a ``.txt`` (one document per line) or a
                     ``.jsonl`` (one object per line, field ``text``); ``.gz`` is fine.
  ``pairs:PATH``     conditional; a ``.jsonl`` with ``source``/``target`` fields.
  ``kjv``            unconditional; the King James Version, one document per verse.
  ``kjv-es``         conditional; KJV verse -> the same verse in the Reina-Valera 1909.
  ``kjv-summarize``  conditional; KJV passage -> its Matthew Henry outline line.

The ``kjv*`` tasks read the Debian SWORD modules (:mod:`dlmbench.tasks.sword`):
``apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc``.

Layouts (every row is exactly ``seq_len`` int64 tokens)
  * unconditional, ``packing: wrap`` (the MDLM/Duo OWT layout, mdlm_duo.md section 1):
    each document's tokens + EOS are concatenated and cut into blocks of ``seq_len - 2``;
    each block becomes ``[BOS] + block + [EOS]``; the incomplete last block is dropped.
  * unconditional, ``packing: pad``: one document per row, truncated to ``seq_len - 1``
    tokens and EOS-padded (at least one EOS ends every row), no BOS (the grammar tasks'
    convention).
  * conditional: ``[source | target]`` with ``prefix_len = int(seq_len * source_fraction)``
    (or ``seq_len - target_len``); each side is truncated to its width minus one and
    EOS-padded, so each side ends with at least one EOS.

Splits: the validation split is the *last* ``valid_documents`` documents (pairs), as
OpenWebText's is its last 100k documents; the rest is training data. A conditional
task's evaluation prompts are ``num_eval`` pairs of the validation split, chosen by
``seed`` (kept in corpus order); their ``references``/``sources`` are the original
strings. The tokenizer is a byte-level BPE trained on the training split only (both
sides for pairs), with dlmbench's special ids.

Built data are cached under ``$DLMBENCH_CACHE/tasks`` (default ``.dlmbench-cache/tasks``),
keyed by the task, its config, ``seq_len`` (and ``num_eval``/``seed`` for conditional
tasks) and the size and mtime of every source file; ``cache: false`` turns it off.
The building blocks here (layouts, cache, :class:`SpecialIdsTokenizer`) are shared with
:mod:`dlmbench.tasks.hub`.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from tokenizers import Tokenizer

import dlmbench
from dlmbench.data import DataSpec
from dlmbench.errors import ConfigError
from dlmbench.task import Task, TaskConfig, TaskData
from dlmbench.tasks import sword
from dlmbench.tokenizer import TextTokenizer

CACHE_FORMAT = 1  # bump when the layout or the cache files change
MEMMAP_BYTES = 64 << 20  # cached arrays larger than this are memory-mapped, not read


# --- tokenizers ---------------------------------------------------------------------------
class SpecialIdsTokenizer(TextTokenizer):
    """A :class:`TextTokenizer` whose special ids are not dlmbench's fixed 0..4.

    Used for pretrained vocabularies (GPT-2: BOS = EOS = 50256, the one added special
    50257 serving as MASK and PAD, mdlm_duo.md section 1).
    """

    def __init__(self, tokenizer: Tokenizer, *, pad_id: int, unk_id: int, bos_id: int,
                 eos_id: int, mask_id: int):
        self.backend = tokenizer
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id = (
            pad_id, unk_id, bos_id, eos_id, mask_id)
        n = tokenizer.get_vocab_size()
        for what, i in self.special_ids().items():
            if not 0 <= i < n:
                raise ValueError(f"{what}={i} is outside the vocabulary of {n} tokens")

    def special_ids(self) -> dict[str, int]:
        return {"pad_id": self.pad_id, "unk_id": self.unk_id, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "mask_id": self.mask_id}


def tokenizer_meta(tok: TextTokenizer) -> dict[str, Any]:
    if isinstance(tok, SpecialIdsTokenizer):
        return {"class": "special", "ids": tok.special_ids()}
    return {"class": "dlmbench"}


def tokenizer_from_meta(data: str, meta: dict[str, Any]) -> TextTokenizer:
    if meta.get("class") == "special":
        return SpecialIdsTokenizer(Tokenizer.from_str(data), **meta["ids"])
    return TextTokenizer.from_str(data)


def encode_texts(tok: TextTokenizer, texts: Sequence[str], batch: int = 10_000) -> list[list[int]]:
    """Token ids of each text, no special tokens (batched through the Rust backend)."""
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i: i + batch])
        out.extend(e.ids for e in tok.backend.encode_batch(chunk, add_special_tokens=False))
    return out


def spec_for(tok: TextTokenizer, seq_len: int, prefix_len: int = 0) -> DataSpec:
    return DataSpec(tok.vocab_size, seq_len, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, prefix_len)


# --- layouts ------------------------------------------------------------------------------
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


class RowWriter:
    """Collects ``(n, width)`` int64 rows in memory, or appends them to a raw file."""

    def __init__(self, width: int, path: Path | None = None):
        self.width, self.path, self.rows = width, path, 0
        self._parts: list[np.ndarray] = []
        self._file = open(path, "wb") if path is not None else None

    def write(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != (self.width,):
            raise ValueError(f"rows of width {rows.shape[1:]} written to a {self.width}-wide writer")
        self.rows += len(rows)
        if self._file is not None:
            np.ascontiguousarray(rows, dtype=np.int64).tofile(self._file)
        else:
            self._parts.append(rows.astype(np.int64, copy=False))

    def finish(self) -> np.ndarray:
        if self._file is not None:
            self._file.close()
            self._file = None
            return read_rows(self.path, self.rows, self.width)  # type: ignore[arg-type]
        if not self._parts:
            return np.zeros((0, self.width), dtype=np.int64)
        return np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]


def read_rows(path: Path, rows: int, width: int) -> np.ndarray:
    if rows == 0:
        return np.zeros((0, width), dtype=np.int64)
    if rows * width * 8 > MEMMAP_BYTES:  # copy-on-write map: lazy, writable, file untouched
        return np.memmap(path, dtype=np.int64, mode="c", shape=(rows, width))
    return np.fromfile(path, dtype=np.int64).reshape(rows, width)


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


# --- the on-disk cache --------------------------------------------------------------------
def cache_root() -> Path:
    """``$DLMBENCH_CACHE/tasks``, else ``.dlmbench-cache/tasks`` in the working directory."""
    base = os.environ.get("DLMBENCH_CACHE")
    return (Path(base).expanduser() if base else Path(".dlmbench-cache")) / "tasks"


def file_stamps(paths: Iterable[str | Path]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of each file (the cache key's view of the sources)."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return sorted(out)


def cache_key(obj: Any) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **obj}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Built:
    """What a builder returns: arrays plus everything else :class:`TaskData` holds."""

    name: str
    spec: DataSpec
    tokenizer: TextTokenizer
    arrays: dict[str, np.ndarray]  # train, valid, and eval_prefixes for conditional tasks
    references: list[str] | None = None
    sources: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _to_task_data(b: Built) -> TaskData:
    t = {k: torch.from_numpy(v) for k, v in b.arrays.items()}
    return TaskData(name=b.name, spec=b.spec, tokenizer=b.tokenizer, train=t["train"], valid=t["valid"],
                    eval_prefixes=t.get("eval_prefixes"), references=b.references, sources=b.sources,
                    info=b.info)


def _save(b: Built, directory: Path) -> None:
    shapes = {}
    for k, arr in b.arrays.items():
        path = directory / f"{k}.bin"
        if isinstance(arr, np.memmap) and arr.filename and Path(arr.filename).resolve() == path.resolve():
            pass  # written in place by a RowWriter
        else:
            np.ascontiguousarray(arr, dtype=np.int64).tofile(path)
        shapes[k] = list(arr.shape)
    (directory / "tokenizer.json").write_text(b.tokenizer.to_str(), encoding="utf-8")
    meta = {"format": CACHE_FORMAT, "name": b.name, "spec": b.spec.to_dict(), "shapes": shapes,
            "tokenizer": tokenizer_meta(b.tokenizer), "references": b.references,
            "sources": b.sources, "info": b.info}
    (directory / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _load(directory: Path) -> Built:
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    tok = tokenizer_from_meta((directory / "tokenizer.json").read_text(encoding="utf-8"), meta["tokenizer"])
    arrays = {k: read_rows(directory / f"{k}.bin", *shape) for k, shape in meta["shapes"].items()}
    return Built(meta["name"], DataSpec(**meta["spec"]), tok, arrays, meta["references"],
                 meta["sources"], meta["info"])


def cached_build(name: str, key: dict[str, Any], enabled: bool,
                 build: Callable[[Path | None], Built]) -> TaskData:
    """Load the cached build for ``key`` or run ``build`` and cache its result.

    ``build`` receives a scratch directory (None when caching is off) where it may
    write row files directly (``RowWriter(width, workdir / "train.bin")``). Entries are
    built in a temporary directory and renamed into place, so concurrent builders
    (e.g. several ranks) never see a half-written entry.
    """
    start = time.perf_counter()
    if not enabled:
        b = build(None)
        b.info.update(cache="off", build_seconds=round(time.perf_counter() - start, 3))
        return _to_task_data(b)
    digest = cache_key(key)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    final = cache_root() / f"{safe}-{digest}"
    reason = None
    if (final / "meta.json").is_file():
        try:
            b = _load(final)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged entry: rebuild
            shutil.rmtree(final, ignore_errors=True)
            reason = f"{type(exc).__name__}: {exc}"
        else:
            b.info.update(cache="hit", cache_dir=str(final), load_seconds=round(time.perf_counter() - start, 3))
            return _to_task_data(b)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{safe}-{digest}.", suffix=".tmp", dir=final.parent))
    try:
        b = build(work)
        b.info.update(build_seconds=round(time.perf_counter() - start, 3), cache_key=digest)
        if reason:
            b.info["rebuilt_after"] = reason
        _save(b, work)
        try:
            os.rename(work, final)
        except OSError:  # another process finished first: use its entry
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    b = _load(final)
    b.info.update(cache="miss", cache_dir=str(final))
    return _to_task_data(b)


# --- builders shared by the local and hub tasks --------------------------------------------
def build_unconditional(name: str, tok: TextTokenizer, train_docs: Iterable[Any],
                        valid_docs: Iterable[Any], seq_len: int, packing: str,
                        workdir: Path | None, info: dict[str, Any]) -> Built:
    """Rows of both splits in the ``wrap`` or ``pad`` layout.

    Each split is a sequence of id lists, or a :class:`Chunked` iterable of lists of id
    lists (streamed, e.g. from a large dataset).
    """
    arrays, lengths = {}, []
    for split, docs in (("train", train_docs), ("valid", valid_docs)):
        writer = RowWriter(seq_len, workdir / f"{split}.bin" if workdir else None)
        n_docs = tokens = truncated = 0
        packer = WrapPacker(seq_len, tok.bos_id, tok.eos_id) if packing == "wrap" else None
        for chunk in _chunks(docs):
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


def _chunks(docs: Iterable[Any], size: int = 10_000) -> Iterator[list[Any]]:
    """Group items into lists; a :class:`Chunked` iterable is passed through."""
    if isinstance(docs, Chunked):
        yield from docs
        return
    it = iter(docs)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class Chunked:
    """Marks an iterable of chunks (lists of items), e.g. from a streamed dataset."""

    def __init__(self, chunks: Iterable[Any]):
        self.chunks = chunks

    def __iter__(self) -> Iterator[Any]:
        return iter(self.chunks)


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


def build_conditional(name: str, tok: TextTokenizer, train: Iterable[PairSplit], valid: Iterable[PairSplit],
                      evals: PairSplit, seq_len: int, prefix_len: int, drop_overlong: bool,
                      workdir: Path | None, info: dict[str, Any]) -> Built:
    """Rows ``[source | target]`` of train/valid, and the evaluation prompts.

    ``train``/``valid`` are iterables of :class:`PairSplit` chunks (a list of one for
    in-memory data). ``evals`` are the chosen prompts (filter them before choosing
    when ``drop_overlong``); only train/valid are filtered here.
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


# --- configs --------------------------------------------------------------------------------
VALID_HELP = ("held-out documents: the last N of the corpus (None: 10% of it, at most "
              "the task's cap)")


class CorpusConfig(TaskConfig):
    """Options of the unconditional local tasks."""

    vocab_size: int = Field(4096, ge=262, description="BPE vocabulary, 5 specials and 256 bytes included")
    packing: Literal["wrap", "pad"] = Field("wrap", description="wrap: MDLM/Duo packing; pad: one document per row")
    valid_documents: int | None = Field(None, ge=1, description=VALID_HELP)
    max_documents: int | None = Field(None, ge=2, description="use only the first N documents (CPU runs)")
    cache: bool = Field(True, description="cache the built tokenizer and tensors on disk")


class PairsTaskConfig(TaskConfig):
    """Options of the conditional local tasks."""

    vocab_size: int = Field(4096, ge=262, description="BPE vocabulary over both sides")
    source_fraction: float = Field(0.5, gt=0, lt=1, description="prefix_len = int(seq_len * source_fraction)")
    target_len: int | None = Field(None, ge=2, description="if set, prefix_len = seq_len - target_len")
    drop_overlong: bool = Field(False, description="drop pairs whose source or target would be truncated")
    valid_documents: int | None = Field(None, ge=1, description=VALID_HELP)
    max_documents: int | None = Field(None, ge=2, description="use only the first N pairs (CPU runs)")
    cache: bool = Field(True, description="cache the built tokenizer and tensors on disk")


class TextConfig(CorpusConfig):
    text_field: str = Field("text", description="the field of a .jsonl corpus")


class PairsConfig(PairsTaskConfig):
    source_field: str = "source"
    target_field: str = "target"


class KJVConfig(CorpusConfig):
    module: str = Field(sword.KJV_MODULE, description="SWORD module name")
    unit: Literal["verse", "chapter"] = Field("verse", description="one document per verse or per chapter")


class KJVTranslateConfig(PairsTaskConfig):
    source_module: str = sword.KJV_MODULE
    target_module: str = sword.RV1909_MODULE


class KJVSummarizeConfig(PairsTaskConfig):
    target_len: int | None = Field(32, ge=2, description="summary positions; prefix_len = seq_len - target_len")
    bible_module: str = sword.KJV_MODULE
    commentary_module: str = sword.MHCC_MODULE


def split_count(cfg_value: int | None, n: int, cap: int, at_least: int, what: str) -> int:
    """How many documents the validation split takes (the last ones)."""
    if cfg_value is None:
        n_valid = max(min(cap, n // 10), at_least, 1)
    else:
        n_valid = cfg_value
    if n_valid >= n:
        raise ConfigError(
            f"{what}: valid_documents={n_valid} leaves no training data ({n} documents"
            f"{'' if cfg_value is not None else ', after raising it to num_eval'}); "
            f"lower task_options.valid_documents or budget.num_samples, or use more data"
        )
    return n_valid


# --- reading local files --------------------------------------------------------------------
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1] if suffixes else ""


def _need_path(task: str, argument: str | None, what: str) -> Path:
    if not argument:
        raise ConfigError(f"task {task!r} needs a file: --task {task}:PATH ({what})")
    path = Path(argument).expanduser()
    if not path.is_file():
        raise ConfigError(f"task {task!r}: {str(path)!r} is not a file; check the path in --task {task}:PATH")
    return path


def read_jsonl(path: Path, fields: Sequence[str]) -> Iterator[tuple[str, ...]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}); one object per line") from None
            missing = [k for k in fields if not isinstance(obj, dict) or k not in obj]
            if missing:
                raise ConfigError(f"{path}:{lineno}: no field {missing[0]!r}; set the task's *_field option "
                                  f"or fix the file")
            yield tuple(str(obj[k]) if obj[k] is not None else "" for k in fields)


def read_documents(path: Path, text_field: str = "text") -> list[str]:
    """Documents of a ``.txt`` (one per non-empty line) or ``.jsonl`` (field) file."""
    kind = _kind(path)
    if kind == ".txt":
        with _open_text(path) as f:
            return [line.strip() for line in f if line.strip()]
    if kind in (".jsonl", ".json"):
        return [t.strip() for (t,) in read_jsonl(path, [text_field]) if t.strip()]
    raise ConfigError(f"{path}: use a .txt (one document per line) or .jsonl (field {text_field!r}) file")


# --- the tasks ------------------------------------------------------------------------------
class _LocalCorpusTask(Task):
    """An unconditional task over a list of documents held in memory."""

    conditional = False
    default_metrics = ("gen-ppl", "unigram-entropy")
    valid_cap = 1000

    def documents(self) -> list[str]:
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}

    def load(self, seq_len: int, num_eval: int, seed: int) -> TaskData:
        cfg: CorpusConfig = self.config  # type: ignore[assignment]
        key = {"task": self.name, "argument": self.argument, "seq_len": seq_len,
               "config": cfg.model_dump(exclude={"cache"}), "files": file_stamps(self.source_files())}
        return cached_build(self.name, key, cfg.cache, lambda work: self._build(seq_len, work))

    def _build(self, seq_len: int, workdir: Path | None) -> Built:
        cfg: CorpusConfig = self.config  # type: ignore[assignment]
        docs = self.documents()
        if cfg.max_documents is not None:
            docs = docs[: cfg.max_documents]
        n_valid = split_count(cfg.valid_documents, len(docs), self.valid_cap, 1, f"task {self.name!r}")
        train_texts, valid_texts = docs[:-n_valid], docs[-n_valid:]
        tok = TextTokenizer.train_bpe(train_texts, cfg.vocab_size)
        train_ids, valid_ids = encode_texts(tok, train_texts), encode_texts(tok, valid_texts)
        info = {**self.describe(), "documents": len(docs)}
        return build_unconditional(self.name, tok, train_ids, valid_ids, seq_len, cfg.packing, workdir, info)


class _LocalPairsTask(Task):
    """A conditional task over (source, target) string pairs held in memory."""

    conditional = True
    default_metrics = ("bleu", "rouge")
    valid_cap = 1000

    def pairs(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}

    def load(self, seq_len: int, num_eval: int, seed: int) -> TaskData:
        cfg: PairsTaskConfig = self.config  # type: ignore[assignment]
        prefix_len = prefix_len_for(seq_len, cfg.source_fraction, cfg.target_len)
        key = {"task": self.name, "argument": self.argument, "seq_len": seq_len, "num_eval": num_eval,
               "seed": seed, "config": cfg.model_dump(exclude={"cache"}),
               "files": file_stamps(self.source_files())}
        return cached_build(self.name, key, cfg.cache,
                            lambda work: self._build(seq_len, prefix_len, num_eval, seed, work))

    def _build(self, seq_len: int, prefix_len: int, num_eval: int, seed: int, workdir: Path | None) -> Built:
        cfg: PairsTaskConfig = self.config  # type: ignore[assignment]
        pairs = self.pairs()
        if cfg.max_documents is not None:
            pairs = pairs[: cfg.max_documents]
        n_valid = split_count(cfg.valid_documents, len(pairs), self.valid_cap, num_eval, f"task {self.name!r}")
        train_p, valid_p = pairs[:-n_valid], pairs[-n_valid:]
        tok = TextTokenizer.train_bpe((t for p in train_p for t in p), cfg.vocab_size)

        train = PairSplit.encode(tok, [s for s, _ in train_p], [t for _, t in train_p])
        valid = PairSplit.encode(tok, [s for s, _ in valid_p], [t for _, t in valid_p])
        info = {**self.describe(), "pairs": len(pairs)}
        pool = fit_filter(valid, prefix_len, seq_len - prefix_len)[0] if cfg.drop_overlong else valid
        evals = pool.select(choose_eval(len(pool), num_eval, seed, f"task {self.name!r}"))
        return build_conditional(self.name, tok, [train], [valid], evals, seq_len, prefix_len,
                                 cfg.drop_overlong, workdir, info)


class TextTask(_LocalCorpusTask):
    """Any local corpus: ``--task text:PATH`` (.txt one document per line, or .jsonl)."""

    name = "text"
    Config = TextConfig

    def path(self) -> Path:
        return _need_path(self.name, self.argument, "a .txt with one document per line, or a .jsonl with a 'text' field")

    def source_files(self) -> list[Path]:
        return [self.path()]

    def documents(self) -> list[str]:
        cfg: TextConfig = self.config  # type: ignore[assignment]
        docs = read_documents(self.path(), cfg.text_field)
        if not docs:
            raise ConfigError(f"task 'text': {self.argument} holds no documents")
        return docs

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path())}


class PairsTask(_LocalPairsTask):
    """Any local parallel corpus: ``--task pairs:PATH`` (.jsonl with source/target)."""

    name = "pairs"
    Config = PairsConfig

    def path(self) -> Path:
        return _need_path(self.name, self.argument, "a .jsonl with 'source' and 'target' fields")

    def source_files(self) -> list[Path]:
        return [self.path()]

    def pairs(self) -> list[tuple[str, str]]:
        cfg: PairsConfig = self.config  # type: ignore[assignment]
        path = self.path()
        if _kind(path) not in (".jsonl", ".json"):
            raise ConfigError(f"task 'pairs': {path} must be a .jsonl file with "
                              f"{cfg.source_field!r}/{cfg.target_field!r} fields")
        out = [(s.strip(), t.strip()) for s, t in read_jsonl(path, [cfg.source_field, cfg.target_field])]
        out = [(s, t) for s, t in out if s and t]
        if not out:
            raise ConfigError(f"task 'pairs': {path} holds no non-empty pairs")
        return out

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path())}


def _modules(*names: str) -> list[sword.ZModule]:
    return [sword.ZModule.open(n) for n in names]


class KJVTask(_LocalCorpusTask):
    """The King James Version (SWORD engKJV2006eb), one document per verse (or chapter)."""

    name = "kjv"
    Config = KJVConfig

    def _module(self) -> sword.ZModule:
        return _modules(self.config.module)[0]  # type: ignore[attr-defined]

    def source_files(self) -> list[Path]:
        return self._module().source_files()

    def documents(self) -> list[str]:
        verses = [(ref, t) for ref, t in self._module().verses() if t]
        if self.config.unit == "verse":  # type: ignore[attr-defined]
            return [t for _, t in verses]
        chapters: dict[tuple[str, int], list[str]] = {}
        for ref, t in verses:
            chapters.setdefault((ref.book, ref.chapter), []).append(t)
        return [" ".join(v) for v in chapters.values()]

    def describe(self) -> dict[str, Any]:
        return {"module": self.config.module, "unit": self.config.unit}  # type: ignore[attr-defined]


class KJVTranslateTask(_LocalPairsTask):
    """English (KJV) verse -> Spanish (Reina-Valera 1909) verse; same versification."""

    name = "kjv-es"
    Config = KJVTranslateConfig

    def _pair_modules(self) -> list[sword.ZModule]:
        cfg: KJVTranslateConfig = self.config  # type: ignore[assignment]
        return _modules(cfg.source_module, cfg.target_module)

    def source_files(self) -> list[Path]:
        return [p for m in self._pair_modules() for p in m.source_files()]

    def pairs(self) -> list[tuple[str, str]]:
        src, tgt = self._pair_modules()
        return [(a, b) for _, a, b in sword.parallel_verses(src, tgt)]

    def describe(self) -> dict[str, Any]:
        cfg: KJVTranslateConfig = self.config  # type: ignore[assignment]
        return {"source_module": cfg.source_module, "target_module": cfg.target_module}


class KJVSummarizeTask(_LocalPairsTask):
    """KJV passage -> the Matthew Henry Concise Commentary's outline line for it."""

    name = "kjv-summarize"
    Config = KJVSummarizeConfig
    valid_cap = 250

    def _pair_modules(self) -> list[sword.ZModule]:
        cfg: KJVSummarizeConfig = self.config  # type: ignore[assignment]
        return _modules(cfg.bible_module, cfg.commentary_module)

    def source_files(self) -> list[Path]:
        return [p for m in self._pair_modules() for p in m.source_files()]

    def pairs(self) -> list[tuple[str, str]]:
        bible, commentary = self._pair_modules()
        pairs, self._stats = sword.outline_pairs(commentary, bible)
        return [(p.passage, p.summary) for p in pairs]

    def describe(self) -> dict[str, Any]:
        cfg: KJVSummarizeConfig = self.config  # type: ignore[assignment]
        return {"bible_module": cfg.bible_module, "commentary_module": cfg.commentary_module,
                "outline_rows": getattr(self, "_stats", {})}


@dlmbench.hookimpl
def register_tasks(register) -> None:
    for cls in (TextTask, PairsTask, KJVTask, KJVTranslateTask, KJVSummarizeTask):
        register(cls)
