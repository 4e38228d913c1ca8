"""Paper-scale tasks through Hugging Face ``datasets``: ``owt``, ``wmt14-de-en``,
``wmt14-en-de`` and ``xsum``.

``datasets`` is an optional extra (``pip install 'dlmbench[datasets]'``), imported only
when one of these tasks is built. Each task reads either the hub dataset named by its
config (``dataset``/``dataset_config``) or local files in the same schema
(``data_files``, loaded with the ``json``/``parquet``/``csv``/``text`` builders), as a
:class:`HubSource` under the corpus or parallel-corpus task (:mod:`dlmbench.tasks.corpus`):

  ``owt``          ``{"text": ...}``; one split; validation = its last ``valid_documents``
                   (100,000) documents, training = the rest (``train[:-100000]``).
  ``wmt14-*``      ``{"translation": {"de": ..., "en": ...}}``; splits train/validation/test.
  ``xsum``         ``{"document": ..., "summary": ..., "id": ...}``; same splits.

``data_files`` is a path, a list of paths (one "train" split) or a mapping
``{split: path(s)}``. When a conditional task's data have no validation split, its last
``valid_documents`` training pairs (1000 if unset) are held out; without a test split
the evaluation prompts come from the validation split.

Layouts (:mod:`dlmbench.tasks.layout`): ``owt`` packs with ``wrap`` as MDLM and Duo do
(at ``seq_len=1024``: ``[BOS] + 1022 tokens + [EOS]``; ``kuleshov-group/mdlm@c112c52
dataloader.py``); WMT14 is ``64 source + 64 target`` at ``seq_len=128``
(``source_fraction=0.5``), XSum ``1024 + 64`` at ``seq_len=1088`` (``target_len=64``),
both sides EOS-padded, as in ELF (Hu et al. 2026, arXiv 2605.10938 section 4).

Tokenizers (:mod:`dlmbench.tasks.tokenizers`): ``tokenizer`` is a hub id or a local
directory for ``transformers.AutoTokenizer`` (``gpt2`` for OWT as MDLM/Duo,
``t5-small`` for WMT14/XSum as ELF, the id its encoder loads), or ``bpe`` to train dlmbench's byte-level
BPE on the training split (``vocab_size``).

Offline (``context.offline``), a hub dataset or tokenizer that is not in the local
Hugging Face cache fails with :class:`~dlmbench.errors.HubUnavailableError` naming it
and ``context.offline_reason``. These tasks never switch the HF libraries offline
themselves: the CLI does, when the hub cannot be reached, so they fail at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field

import dlmbench
from dlmbench.context import RunContext
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.hub_needs import HubNeed, hub_id
from dlmbench.task import Task, TaskConfig
from dlmbench.tasks.cache import file_stamps
from dlmbench.tasks.corpus import BATCH, CorpusConfig, CorpusTask, ParallelCorpusConfig, ParallelCorpusTask
from dlmbench.tasks.sources import Document, Pair, Source
from dlmbench.tasks.tokenizers import TokenizerChoice, offline_fix

PIP_FIX = "pip install 'dlmbench[datasets]'"
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
            ".txt": "text", ".arrow": "arrow"}

DataFiles = str | list[str] | dict[str, str | list[str]]
T = TypeVar("T")


# --- configs --------------------------------------------------------------------------------
class HubConfig(TaskConfig):
    """Where a hub task's data and tokenizer come from (the options every hub task adds
    to its corpus or parallel-corpus options)."""

    dataset: str = Field(description="hub dataset id")
    dataset_config: str | None = Field(None, description="hub dataset config name")
    data_files: DataFiles | None = Field(
        None, description="local files in the same schema instead of the hub: a path, a list, or {split: path(s)}")
    data_format: Literal["json", "parquet", "csv", "text", "arrow"] | None = Field(
        None, description="builder for data_files (default: from the file extension)")
    hf_cache_dir: str | None = Field(None, description="datasets cache_dir (default: HF_HOME's)")
    tokenizer: str = Field(description="AutoTokenizer hub id or local directory, or 'bpe' (trained locally)")


class OWTConfig(CorpusConfig, HubConfig):
    dataset: str = "Skylion007/openwebtext"
    tokenizer: str = "gpt2"
    split: str = Field("train", description="the one split OWT has")
    text_field: str = "text"
    valid_documents: int = Field(100_000, ge=1, description="the last N documents are the validation split")


class HubPairsConfig(ParallelCorpusConfig, HubConfig):
    tokenizer: str = "t5-small"
    train_split: str = "train"
    valid_split: str = "validation"
    eval_split: str = Field("test", description="the split the evaluation prompts come from")
    valid_documents: int | None = Field(None, ge=1, description=(
        "cap on validation pairs (held out from train, 1000 if None, when there is no validation split)"))


class WMT14Config(HubPairsConfig):
    dataset: str = "wmt/wmt14"
    dataset_config: str | None = "de-en"


class XSumConfig(HubPairsConfig):
    dataset: str = "EdinburghNLP/xsum"
    source_field: str = "document"
    target_field: str = "summary"
    target_len: int | None = Field(64, ge=2, description="summary positions (1024 + 64 at seq_len 1088)")


HubPairsConfigT = TypeVar("HubPairsConfigT", bound=HubPairsConfig)


# --- the source -----------------------------------------------------------------------------
def _datasets(task: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"task {task!r} needs the `datasets` package: {PIP_FIX}") from None
    return datasets


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


class DatasetSplit(Generic[T]):
    """One split of a ``datasets.Dataset``, read in batches of ``BATCH`` rows."""

    def __init__(self, ds: Any, items: Callable[[dict[str, list[Any]]], list[T]]):
        self.ds, self.items = ds, items

    def __len__(self) -> int:
        return len(self.ds)

    def __iter__(self) -> Iterator[T]:
        for batch in self.ds.iter(batch_size=BATCH):
            yield from self.items(batch)

    def window(self, start: int, stop: int) -> "DatasetSplit[T]":
        if (start, stop) == (0, len(self.ds)):
            return self
        return DatasetSplit(self.ds.select(range(start, stop)), self.items)


class HubSource(Generic[T]):
    """A hub dataset, or local files in its schema; ``items`` turns a batch into items."""

    def __init__(self, task: str, cfg: HubConfig, schema: str, items: Callable[[dict[str, list[Any]]], list[T]]):
        self.task, self.cfg, self.schema, self.items = task, cfg, schema, items

    def stamp(self) -> Any:
        if self.cfg.data_files is not None:
            return {split: file_stamps(paths) for split, paths in _normalize_files(self.cfg.data_files).items()}
        return {"dataset": self.cfg.dataset, "config": self.cfg.dataset_config}

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset if self.cfg.data_files is None else "data_files"}

    def open(self, context: RunContext) -> Mapping[str, DatasetSplit[T]]:
        return {name: DatasetSplit(ds, self.items) for name, ds in self._load(context).items()}

    def _load(self, context: RunContext) -> Any:
        """The ``DatasetDict``: the local ``data_files``, or the hub dataset."""
        cfg, datasets = self.cfg, _datasets(self.task)
        if cfg.data_files is not None:
            files = _normalize_files(cfg.data_files)
            return datasets.load_dataset(_format_of(files, cfg.data_format), data_files=files,
                                         cache_dir=cfg.hf_cache_dir)
        name = cfg.dataset + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
        try:
            return datasets.load_dataset(cfg.dataset, cfg.dataset_config, cache_dir=cfg.hf_cache_dir)
        except Exception as exc:
            if context.offline or isinstance(exc, (ConnectionError, TimeoutError)):
                why = (offline_fix("it", context) if context.offline
                       else f"the hub could not be reached ({type(exc).__name__})")
                raise HubUnavailableError(
                    f"task {self.task!r}: dataset {name!r}: {why}; point task_options.data_files at "
                    f"local files in the same schema ({self.schema}), or allow the hub "
                    f"(DLMBENCH_ONLINE=1 HF_HUB_OFFLINE=0)"
                ) from None
            raise ConfigError(f"task {self.task!r}: could not load dataset {name!r}: {exc}") from exc


def _column(batch: dict[str, list[Any]], name: str) -> list[str]:
    return [t if t is not None else "" for t in batch[name]]


# --- tasks ----------------------------------------------------------------------------------
def hub_source_needs(task: str, cfg: HubConfig) -> list[HubNeed]:
    """A hub task's dataset (unless ``data_files`` replace it) and tokenizer."""
    needs = [] if cfg.data_files is not None else [HubNeed(repo=cfg.dataset, what=f"task {task}: dataset",
                                                           kind="dataset")]
    if repo := hub_id(cfg.tokenizer):
        needs.append(HubNeed(repo=repo, what=f"task {task}: tokenizer"))
    return needs


class OWTTask(CorpusTask[OWTConfig]):
    """OpenWebText, packed as MDLM/Duo do (``train[:-100000]``, last 100k for validation)."""

    name = "owt"
    Config = OWTConfig

    def source(self) -> Source[Document]:
        field = self.config.text_field
        return HubSource(self.name, self.config, '{"text": ...}', lambda batch: _column(batch, field))

    def tokenizer(self) -> TokenizerChoice:
        return TokenizerChoice(self.config.tokenizer, self.config.vocab_size)

    def hub_needs(self) -> list[HubNeed]:
        return hub_source_needs(self.name, self.config)

    def split_name(self) -> str:
        return self.config.split


class _HubPairsTask(ParallelCorpusTask[HubPairsConfigT]):
    schema = ""

    def pairs(self, batch: dict[str, list[Any]]) -> list[Pair]:
        raise NotImplementedError

    def source(self) -> Source[Pair]:
        return HubSource(self.name, self.config, self.schema, self.pairs)

    def tokenizer(self) -> TokenizerChoice:
        return TokenizerChoice(self.config.tokenizer, self.config.vocab_size)

    def hub_needs(self) -> list[HubNeed]:
        return hub_source_needs(self.name, self.config)

    def split_names(self) -> tuple[str, str, str]:
        return self.config.train_split, self.config.valid_split, self.config.eval_split

    def default_holdout(self, n: int, num_eval: int) -> int:
        return 1000


class _WMT14Task(_HubPairsTask[WMT14Config]):
    Config = WMT14Config
    schema = '{"translation": {"de": ..., "en": ...}}'
    source_lang = ""
    target_lang = ""

    def pairs(self, batch: dict[str, list[Any]]) -> list[Pair]:
        return [(r[self.source_lang] or "", r[self.target_lang] or "") for r in batch["translation"]]


class WMT14DeEnTask(_WMT14Task):
    """WMT14 German -> English (ELF's headline translation task; 64 + 64 tokens)."""

    name = "wmt14-de-en"
    source_lang, target_lang = "de", "en"


class WMT14EnDeTask(_WMT14Task):
    """WMT14 English -> German."""

    name = "wmt14-en-de"
    source_lang, target_lang = "en", "de"


class XSumTask(_HubPairsTask[XSumConfig]):
    """XSum: BBC article -> one-sentence summary (1024 + 64 tokens in ELF)."""

    name = "xsum"
    Config = XSumConfig
    schema = '{"document": ..., "summary": ..., "id": ...}'

    def pairs(self, batch: dict[str, list[Any]]) -> list[Pair]:
        return list(zip([t or "" for t in batch[self.config.source_field]],
                        [t or "" for t in batch[self.config.target_field]]))


@dlmbench.hookimpl
def register_tasks(register: Callable[[type[Task[Any]]], None]) -> None:
    for cls in (OWTTask, WMT14DeEnTask, WMT14EnDeTask, XSumTask):
        register(cls)
