"""One tokenizer wrapper for every task, built on the ``tokenizers`` library.

Every vocabulary dlmbench builds reserves the same five special tokens at fixed ids
(``[PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3, [MASK]=4``) so that absorbing-state models find
their mask inside the vocabulary and EOS handling is the same for every task. A
pretrained vocabulary keeps its own ids (:class:`SpecialIdsTokenizer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers, decoders

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(len(SPECIAL_TOKENS))


class TokenizerRequest(BaseModel):
    """The tokenizer a model reads a task through (:meth:`dlmbench.Model.tokenizer_request`,
    overridden by a model entry's ``tokenizer``). The task provides text; each model sees
    it through its own vocabulary, as ELF reads OpenWebText through T5's SentencePiece and
    MDLM/Duo through GPT-2's BPE. The default request, the task's own tokenizer with a
    mask, is what every model got before models could ask."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="hub id, local directory or 'bpe'; None: the task's own")
    mask: bool = Field(True, description="a [MASK] id inside the vocabulary (absorbing-state models; "
                                         "a pretrained vocabulary without one gets one appended)")

    @property
    def is_default(self) -> bool:
        return self == TokenizerRequest()


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with dlmbench's special ids and sample decoding."""

    pad_id, unk_id, bos_id, eos_id, mask_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID

    def __init__(self, tokenizer: Tokenizer):
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(f"tokenizer must map {tok} to id {i}")
        self.backend = tokenizer

    @classmethod
    def word_level(cls, words: Iterable[str]) -> "TextTokenizer":
        """A whitespace word-level tokenizer over a fixed word list (synthetic tasks)."""
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for w in sorted(set(words)):
            vocab.setdefault(w, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # so decoding can skip them
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        return cls(tok)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
        """A byte-level BPE tokenizer trained locally (real-text tasks, no hub)."""
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, data: str) -> "TextTokenizer":
        return cls(Tokenizer.from_str(data))

    def to_str(self) -> str:
        return self.backend.to_str()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def cut_at_eos(self, ids: Sequence[int]) -> list[int]:
        """Ids up to (not including) the first EOS."""
        ids = list(ids)
        return ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids


class SpecialIdsTokenizer(TextTokenizer):
    """A :class:`TextTokenizer` whose special ids are not dlmbench's fixed 0..4.

    Used for pretrained vocabularies, e.g. GPT-2 as MDLM and Duo use it: BOS = EOS =
    ``<|endoftext|>`` = 50256, and one added id, 50257, that MDLM uses as MASK
    (``kuleshov-group/mdlm@c112c52 diffusion.py``, ``Diffusion.__init__``) and Duo as
    PAD (``s-sahoo/duo@7c9b498 dataloader.py``, ``get_tokenizer``); here it serves as both.
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
    """What :func:`tokenizer_from_meta` needs besides ``tok.to_str()``: the special ids."""
    if isinstance(tok, SpecialIdsTokenizer):
        return {"class": "special", "ids": tok.special_ids()}
    return {"class": "dlmbench"}


def tokenizer_from_meta(data: str, meta: dict[str, Any]) -> TextTokenizer:
    if meta.get("class") == "special":
        return SpecialIdsTokenizer(Tokenizer.from_str(data), **meta["ids"])
    return TextTokenizer.from_str(data)
