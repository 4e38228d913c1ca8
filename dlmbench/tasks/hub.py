"""Paper-scale tasks through Hugging Face ``datasets``: ``owt``, ``wmt14-de-en``,
``wmt14-en-de`` and ``xsum``.

``datasets`` is an optional extra (``pip install 'dlmbench[datasets]'``), imported only
when one of these tasks is built. Each task reads either the hub dataset named by its
config (``dataset``/``dataset_config``) or local files in the same schema
(``data_files``, loaded with the ``json``/``parquet``/``csv``/``text`` builders):

  ``owt``          ``{"text": ...}``; one split; validation = its last ``valid_documents``
                   (100,000) documents, training = the rest (``train[:-100000]``).
  ``wmt14-*``      ``{"translation": {"de": ..., "en": ...}}``; splits train/validation/test.
  ``xsum``         ``{"document": ..., "summary": ..., "id": ...}``; same splits.

``data_files`` is a path, a list of paths (one "train" split) or a mapping
``{split: path(s)}``. When a conditional task's data have no validation split, its last
``valid_documents`` training pairs are held out; without a test split the evaluation
prompts come from the validation split.

Layouts (mdlm_duo.md section 1, elf.md section 1): ``owt`` packs with ``wrap`` (at
``seq_len=1024``: ``[BOS] + 1022 tokens + [EOS]``); WMT14 is ``64 source + 64 target``
at ``seq_len=128`` (``source_fraction=0.5``); XSum ``1024 + 64`` at ``seq_len=1088``
(``target_len=64``); both sides EOS-padded (see :mod:`dlmbench.tasks.text`).

Tokenizers: ``tokenizer`` is a hub id or a local directory for
``transformers.AutoTokenizer`` (``gpt2`` for OWT, ``google-t5/t5-small`` for WMT14/XSum,
as the references), or ``bpe`` to train dlmbench's byte-level BPE on the training split
(``vocab_size``). A pretrained vocabulary keeps its ids; following MDLM/Duo one special
is added when the tokenizer has no mask token (GPT-2: 50257 + ``[MASK]`` = 50258 rows,
the added id also serving as PAD when there is none), and BOS falls back to EOS (GPT-2's
``<|endoftext|>`` is both).

Offline, a hub dataset or tokenizer that is not in the local Hugging Face cache fails
at once with :class:`~dlmbench.errors.HubUnavailableError` naming it (the offline
switches ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are honoured, and set when the hub
cannot be reached; ``DLMBENCH_ONLINE=1`` skips that check).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tokenizers import Tokenizer

import dlmbench
from dlmbench.environment import set_hub_offline_if_unreachable
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.task import Task, TaskConfig, TaskData
from dlmbench.tasks.text import (
    Built, Chunked, PairSplit, SpecialIdsTokenizer, build_conditional, build_unconditional,
    cached_build, choose_eval, encode_texts, file_stamps, fit_filter, prefix_len_for,
)
from dlmbench.tokenizer import TextTokenizer

PIP_FIX = "pip install 'dlmbench[datasets]'"
BATCH = 10_000  # documents encoded per chunk
_TRUE = ("1", "ON", "YES", "TRUE")
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
            ".txt": "text", ".arrow": "arrow"}

DataFiles = str | list[str] | dict[str, str | list[str]]


# --- hub access -----------------------------------------------------------------------------
def _datasets(task: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"task {task!r} needs the `datasets` package: {PIP_FIX}") from None
    return datasets


def hub_offline() -> bool:
    """Whether hub look-ups must not touch the network (after probing it once)."""
    set_hub_offline_if_unreachable()
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _force_offline_mode() -> None:
    """The HF libraries read the offline switches once, at import; if they were imported
    before the switches were set, set their module-level flags too so they fail at once
    instead of retrying for ~25 s."""
    import importlib

    for mod, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                       ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        for name in names:
            if hasattr(m, name):
                setattr(m, name, True)


def _offline_fix(what: str) -> str:
    return (f"{what} is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set, or huggingface.co unreachable)")


def _normalize_files(files: DataFiles) -> dict[str, list[str]]:
    if isinstance(files, dict):
        out = {k: [v] if isinstance(v, str) else list(v) for k, v in files.items()}
    else:
        out = {"train": [files] if isinstance(files, str) else list(files)}
    for split, paths in out.items():
        for p in paths:
            if not Path(p).expanduser().is_file():
                raise ConfigError(f"data_files[{split!r}]: {p!r} is not a file; check task_options.data_files")
    return {k: [str(Path(p).expanduser()) for p in v] for k, v in out.items()}


def _format_of(files: dict[str, list[str]], fmt: str | None) -> str:
    if fmt:
        return fmt
    first = Path(next(iter(files.values()))[0])
    suffixes = [s for s in first.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    kind = _FORMATS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise ConfigError(f"cannot tell the format of {str(first)!r}; set task_options.data_format "
                          f"({', '.join(sorted(set(_FORMATS.values())))})")
    return kind


def load_splits(task: str, cfg: "HubConfig", schema: str) -> Any:
    """The ``DatasetDict`` of a task: its local ``data_files``, or the hub dataset."""
    datasets = _datasets(task)
    if cfg.data_files is not None:
        files = _normalize_files(cfg.data_files)
        return datasets.load_dataset(_format_of(files, cfg.data_format), data_files=files,
                                     cache_dir=cfg.hf_cache_dir)
    name = cfg.dataset + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    offline = hub_offline()
    if offline:
        _force_offline_mode()
    try:
        return datasets.load_dataset(cfg.dataset, cfg.dataset_config, cache_dir=cfg.hf_cache_dir)
    except Exception as exc:
        if offline or isinstance(exc, (ConnectionError, TimeoutError)):
            raise HubUnavailableError(
                f"task {task!r}: dataset {name!r}: {_offline_fix('it')}; point "
                f"task_options.data_files at local files in the same schema ({schema}), or "
                f"allow the hub (DLMBENCH_ONLINE=1 HF_HUB_OFFLINE=0)"
            ) from None
        raise ConfigError(f"task {task!r}: could not load dataset {name!r}: {exc}") from exc


def pretrained_tokenizer(task: str, name: str) -> SpecialIdsTokenizer:
    """An ``AutoTokenizer`` vocabulary with its own ids, plus ``[MASK]`` when it has none."""
    local = Path(name).expanduser()
    offline = not local.exists() and hub_offline()
    if offline:
        _force_offline_mode()
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(local) if local.exists() else name)
    except Exception as exc:
        if offline:
            raise HubUnavailableError(
                f"task {task!r}: tokenizer {name!r}: {_offline_fix('it')}; use a local tokenizer "
                f"directory, or task_options.tokenizer=bpe to train one on the data"
            ) from None
        raise ConfigError(f"task {task!r}: could not load tokenizer {name!r}: {exc}") from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"task {task!r}: tokenizer {name!r} has no fast (Rust) backend; use a fast tokenizer")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    if hf.eos_token_id is None:
        raise ConfigError(f"task {task!r}: tokenizer {name!r} has no EOS token")
    eos = hf.eos_token_id
    mask = hf.mask_token_id
    if mask is None:
        tok.add_special_tokens(["[MASK]"])
        mask = tok.token_to_id("[MASK]")
    return SpecialIdsTokenizer(
        tok, pad_id=hf.pad_token_id if hf.pad_token_id is not None else mask,
        unk_id=hf.unk_token_id if hf.unk_token_id is not None else eos,
        bos_id=hf.bos_token_id if hf.bos_token_id is not None else eos, eos_id=eos, mask_id=mask,
    )


def _tokenizer_stamp(name: str) -> Any:
    path = Path(name).expanduser()
    if path.is_dir():
        return file_stamps(p for p in path.rglob("*") if p.is_file())
    return name


def _source_stamp(cfg: "HubConfig") -> Any:
    if cfg.data_files is not None:
        files = _normalize_files(cfg.data_files)
        return {split: file_stamps(paths) for split, paths in files.items()}
    return {"dataset": cfg.dataset, "config": cfg.dataset_config}


# --- configs --------------------------------------------------------------------------------
class HubConfig(TaskConfig):
    """Options every hub task shares."""

    dataset: str = Field(description="hub dataset id")
    dataset_config: str | None = Field(None, description="hub dataset config name")
    data_files: DataFiles | None = Field(
        None, description="local files in the same schema instead of the hub: a path, a list, or {split: path(s)}")
    data_format: Literal["json", "parquet", "csv", "text", "arrow"] | None = Field(
        None, description="builder for data_files (default: from the file extension)")
    hf_cache_dir: str | None = Field(None, description="datasets cache_dir (default: HF_HOME's)")
    tokenizer: str = Field(description="AutoTokenizer hub id or local directory, or 'bpe' (trained locally)")
    vocab_size: int = Field(4096, ge=262, description="vocabulary of tokenizer=bpe")
    max_documents: int | None = Field(None, ge=2, description="use only the first N training documents (CPU runs)")
    cache: bool = Field(True, description="cache the built tokenizer and tensors on disk")


class OWTConfig(HubConfig):
    dataset: str = "Skylion007/openwebtext"
    tokenizer: str = "gpt2"
    split: str = Field("train", description="the one split OWT has")
    text_field: str = "text"
    valid_documents: int = Field(100_000, ge=1, description="the last N documents are the validation split")
    packing: Literal["wrap", "pad"] = "wrap"


class HubPairsConfig(HubConfig):
    tokenizer: str = "google-t5/t5-small"
    train_split: str = "train"
    valid_split: str = "validation"
    eval_split: str = Field("test", description="the split the evaluation prompts come from")
    valid_documents: int | None = Field(
        None, ge=1, description="cap on validation pairs (held out from train, 1000 if None, when there is no validation split)")
    source_fraction: float = Field(0.5, gt=0, lt=1)
    target_len: int | None = Field(None, ge=2, description="if set, prefix_len = seq_len - target_len")
    drop_overlong: bool = Field(False, description="drop pairs whose source or target would be truncated")


class WMT14Config(HubPairsConfig):
    dataset: str = "wmt/wmt14"
    dataset_config: str | None = "de-en"


class XSumConfig(HubPairsConfig):
    dataset: str = "EdinburghNLP/xsum"
    source_field: str = "document"
    target_field: str = "summary"
    target_len: int | None = Field(64, ge=2, description="summary positions (1024 + 64 at seq_len 1088)")


# --- tasks ----------------------------------------------------------------------------------
def _texts(ds: Any, field: str) -> Iterator[list[str]]:
    for batch in ds.iter(batch_size=BATCH):
        yield [t if t is not None else "" for t in batch[field]]


class _HubTask(Task):
    schema = ""

    def _key(self, seq_len: int, extra: dict[str, Any]) -> dict[str, Any]:
        cfg: HubConfig = self.config  # type: ignore[assignment]
        return {"task": self.name, "seq_len": seq_len, "config": cfg.model_dump(exclude={"cache", "hf_cache_dir"}),
                "source": _source_stamp(cfg), "tokenizer": _tokenizer_stamp(cfg.tokenizer), **extra}

    def _pretrained(self) -> TextTokenizer | None:
        """The pretrained tokenizer (loaded before the data, so a missing one fails
        first), or None for ``bpe``."""
        cfg: HubConfig = self.config  # type: ignore[assignment]
        return None if cfg.tokenizer == "bpe" else pretrained_tokenizer(self.name, cfg.tokenizer)

    def _tokenizer(self, pretrained: TextTokenizer | None, texts: Iterable[str]) -> TextTokenizer:
        cfg: HubConfig = self.config  # type: ignore[assignment]
        return pretrained if pretrained is not None else TextTokenizer.train_bpe(texts, cfg.vocab_size)

    def _split(self, splits: Any, name: str) -> Any:
        if name not in splits:
            raise ConfigError(f"task {self.name!r}: the data have no {name!r} split (they have "
                              f"{', '.join(splits)}); set the task's *_split option or data_files")
        return splits[name]


class OWTTask(_HubTask):
    """OpenWebText, packed as MDLM/Duo do (``train[:-100000]``, last 100k for validation)."""

    name = "owt"
    Config = OWTConfig
    conditional = False
    default_metrics = ("gen-ppl", "unigram-entropy")
    schema = '{"text": ...}'

    def load(self, seq_len: int, num_eval: int, seed: int) -> TaskData:
        cfg: OWTConfig = self.config  # type: ignore[assignment]
        return cached_build(self.name, self._key(seq_len, {}), cfg.cache, lambda w: self._build(seq_len, w))

    def _build(self, seq_len: int, workdir: Path | None) -> Built:
        cfg: OWTConfig = self.config  # type: ignore[assignment]
        pretrained = self._pretrained()
        full = self._split(load_splits(self.name, cfg, self.schema), cfg.split)
        n = len(full) if cfg.max_documents is None else min(len(full), cfg.max_documents)
        if cfg.valid_documents >= n:
            raise ConfigError(f"task 'owt': valid_documents={cfg.valid_documents} leaves no training "
                              f"documents ({n}); lower task_options.valid_documents")
        train = full.select(range(n - cfg.valid_documents))
        valid = full.select(range(n - cfg.valid_documents, n))
        tok = self._tokenizer(pretrained, (t for chunk in _texts(train, cfg.text_field) for t in chunk))

        def ids(ds: Any) -> Chunked:
            return Chunked(encode_texts(tok, texts) for texts in _texts(ds, cfg.text_field))

        info = {"dataset": cfg.dataset if cfg.data_files is None else "data_files", "documents": n,
                "tokenizer": cfg.tokenizer}
        return build_unconditional(self.name, tok, ids(train), ids(valid), seq_len, cfg.packing, workdir, info)


class _HubPairsTask(_HubTask):
    conditional = True
    default_metrics = ("bleu", "rouge")

    def texts(self, batch: dict[str, list[Any]]) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def load(self, seq_len: int, num_eval: int, seed: int) -> TaskData:
        cfg: HubPairsConfig = self.config  # type: ignore[assignment]
        prefix_len = prefix_len_for(seq_len, cfg.source_fraction, cfg.target_len)
        key = self._key(seq_len, {"num_eval": num_eval, "seed": seed})
        return cached_build(self.name, key, cfg.cache,
                            lambda w: self._build(seq_len, prefix_len, num_eval, seed, w))

    def _pairs(self, ds: Any, keep_empty: bool = False) -> Iterator[tuple[list[str], list[str]]]:
        for batch in ds.iter(batch_size=BATCH):
            src, tgt = self.texts(batch)
            if not keep_empty:
                keep = [i for i in range(len(src)) if src[i].strip() and tgt[i].strip()]
                if len(keep) < len(src):
                    src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
            yield src, tgt

    def _build(self, seq_len: int, prefix_len: int, num_eval: int, seed: int, workdir: Path | None) -> Built:
        cfg: HubPairsConfig = self.config  # type: ignore[assignment]
        pretrained = self._pretrained()
        splits = load_splits(self.name, cfg, self.schema)
        train = self._split(splits, cfg.train_split)
        if cfg.max_documents is not None:
            train = train.select(range(min(len(train), cfg.max_documents)))
        if cfg.valid_split in splits:
            valid = splits[cfg.valid_split]
            if cfg.valid_documents is not None:
                valid = valid.select(range(min(len(valid), cfg.valid_documents)))
            carved = False
        else:  # hold out the last pairs of the training split
            n_valid = cfg.valid_documents or 1000
            if n_valid >= len(train):
                raise ConfigError(f"task {self.name!r}: no {cfg.valid_split!r} split and valid_documents="
                                  f"{n_valid} leaves no training pairs ({len(train)}); lower it")
            train, valid = train.select(range(len(train) - n_valid)), train.select(range(len(train) - n_valid, len(train)))
            carved = True
        eval_ds = splits[cfg.eval_split] if cfg.eval_split in splits else valid
        tok = self._tokenizer(pretrained, (t for src, tgt in self._pairs(train) for t in (*src, *tgt)))

        def chunks(ds: Any) -> Iterator[PairSplit]:
            for src, tgt in self._pairs(ds):
                yield PairSplit.encode(tok, src, tgt)

        pool_src, pool_tgt = [], []
        for src, tgt in self._pairs(eval_ds, keep_empty=True):
            pool_src += src
            pool_tgt += tgt
        pool = PairSplit.encode(tok, pool_src, pool_tgt)
        info: dict[str, Any] = {"dataset": cfg.dataset if cfg.data_files is None else "data_files",
                                "tokenizer": cfg.tokenizer, "valid_carved_from_train": carved,
                                "eval_split": cfg.eval_split if cfg.eval_split in splits else "validation"}
        if cfg.drop_overlong:
            pool, info["eval_pool_dropped_overlong"] = fit_filter(pool, prefix_len, seq_len - prefix_len)
        evals = pool.select(choose_eval(len(pool), num_eval, seed, f"task {self.name!r}"))
        return build_conditional(self.name, tok, chunks(train), chunks(valid), evals, seq_len, prefix_len,
                                 cfg.drop_overlong, workdir, info)


class _WMT14Task(_HubPairsTask):
    Config = WMT14Config
    schema = '{"translation": {"de": ..., "en": ...}}'
    source_lang = ""
    target_lang = ""

    def texts(self, batch: dict[str, list[Any]]) -> tuple[list[str], list[str]]:
        rows = batch["translation"]
        return ([r[self.source_lang] or "" for r in rows], [r[self.target_lang] or "" for r in rows])


class WMT14DeEnTask(_WMT14Task):
    """WMT14 German -> English (ELF's headline translation task; 64 + 64 tokens)."""

    name = "wmt14-de-en"
    source_lang, target_lang = "de", "en"


class WMT14EnDeTask(_WMT14Task):
    """WMT14 English -> German."""

    name = "wmt14-en-de"
    source_lang, target_lang = "en", "de"


class XSumTask(_HubPairsTask):
    """XSum: BBC article -> one-sentence summary (1024 + 64 tokens in ELF)."""

    name = "xsum"
    Config = XSumConfig
    schema = '{"document": ..., "summary": ..., "id": ...}'

    def texts(self, batch: dict[str, list[Any]]) -> tuple[list[str], list[str]]:
        cfg: XSumConfig = self.config  # type: ignore[assignment]
        return ([t or "" for t in batch[cfg.source_field]], [t or "" for t in batch[cfg.target_field]])


@dlmbench.hookimpl
def register_tasks(register) -> None:
    for cls in (OWTTask, WMT14DeEnTask, WMT14EnDeTask, XSumTask):
        register(cls)
