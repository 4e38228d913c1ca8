"""How a task turns its source's text into ids: the tokenizer choice, and encoding.

Sources give text (:mod:`dlmbench.tasks.sources`); a :class:`TokenizerChoice` says which
vocabulary encodes it, so one source can be read through different tokenizers:

* ``bpe``: dlmbench's byte-level BPE with its fixed special ids, trained on the task's
  training split (``vocab_size`` entries; both sides for pairs);
* any other name: a hub id or local directory for ``transformers.AutoTokenizer``, kept
  with its own ids (:class:`~dlmbench.tokenizer.SpecialIdsTokenizer`). Following MDLM
  and Duo, one special is added when it has no mask token (GPT-2: 50257 + ``[MASK]`` =
  50258 rows, the added id also serving as PAD when there is none), and BOS falls back
  to EOS (GPT-2's ``<|endoftext|>`` is both). A model that needs no mask (``mask=False``,
  e.g. ELF over T5's vocabulary) keeps the vocabulary as it is when it has a PAD (T5:
  ``len(tokenizer)`` = 32,100 rows, ELF's decode head); its mask id is then the PAD's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from dlmbench.context import RunContext
from dlmbench.data import DataSpec
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.tasks.cache import file_stamps
from dlmbench.tokenizer import SpecialIdsTokenizer, TextTokenizer

BPE = "bpe"


def encode_texts(tok: TextTokenizer, texts: Sequence[str], batch: int = 10_000) -> list[list[int]]:
    """Token ids of each text, no special tokens (batched through the Rust backend)."""
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i: i + batch])
        out.extend(e.ids for e in tok.backend.encode_batch(chunk, add_special_tokens=False))
    return out


def spec_for(tok: TextTokenizer, seq_len: int, prefix_len: int = 0) -> DataSpec:
    return DataSpec(tok.vocab_size, seq_len, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, prefix_len)


def offline_fix(what: str, context: RunContext) -> str:
    """The clause of an offline error: why the hub was not asked."""
    return (f"{what} is not in the local Hugging Face cache and the hub is offline "
            f"({context.offline_reason or 'offline'})")


@dataclass(frozen=True)
class TokenizerChoice:
    """``bpe`` (trained on the training split) or a pretrained tokenizer's name; ``mask``:
    whether a pretrained vocabulary without a mask token gets one appended."""

    name: str = BPE
    vocab_size: int = 4096  # of ``bpe`` only
    mask: bool = True

    def stamp(self) -> Any:
        """The cache key's view: the files of a local directory, else the name (and the
        mask rule when it is not the default)."""
        path = Path(self.name).expanduser()
        stamp: Any = self.name
        if self.name != BPE and path.is_dir():
            stamp = file_stamps(p for p in path.rglob("*") if p.is_file())
        return stamp if self.mask or self.name == BPE else {"tokenizer": stamp, "mask": False}

    def pretrained(self, task: str, context: RunContext) -> SpecialIdsTokenizer | None:
        """The pretrained tokenizer, or None for ``bpe``. Tasks load it before their data,
        so a missing one fails before a large dataset is read."""
        return None if self.name == BPE else pretrained_tokenizer(task, self.name, context, self.mask)

    def fit(self, pretrained: TextTokenizer | None, train_texts: Iterable[str]) -> TextTokenizer:
        """``pretrained`` if there is one, else a BPE trained on ``train_texts``."""
        return pretrained if pretrained is not None else TextTokenizer.train_bpe(train_texts, self.vocab_size)


def pretrained_tokenizer(task: str, name: str, context: RunContext, mask: bool = True) -> SpecialIdsTokenizer:
    """An ``AutoTokenizer`` vocabulary with its own ids, plus ``[MASK]`` when it has none
    (and ``mask`` asks for one, or it has no PAD either).

    Offline (``context.offline``), only the local Hugging Face cache is asked.
    """
    local = Path(name).expanduser()
    offline = not local.exists() and context.offline
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(local) if local.exists() else name, local_files_only=offline)
    except Exception as exc:
        if offline:
            raise HubUnavailableError(
                f"task {task!r}: tokenizer {name!r}: {offline_fix('it', context)}; download it while online "
                f"(`hf download {name}`), or name a local tokenizer directory (a model entry's `tokenizer`, "
                f"or task_options.tokenizer; `bpe` trains one on the data)"
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
    mask_id = hf.mask_token_id
    if mask_id is None and (mask or hf.pad_token_id is None):
        tok.add_special_tokens(["[MASK]"])
        mask_id = tok.token_to_id("[MASK]")
    elif mask_id is None:
        mask_id = hf.pad_token_id  # the model asked for no mask: nothing is appended
    return SpecialIdsTokenizer(
        tok, pad_id=hf.pad_token_id if hf.pad_token_id is not None else mask_id,
        unk_id=hf.unk_token_id if hf.unk_token_id is not None else eos,
        bos_id=hf.bos_token_id if hf.bos_token_id is not None else eos, eos_id=eos, mask_id=mask_id,
    )
