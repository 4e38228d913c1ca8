"""One tokenizer wrapper for every task, built on the ``tokenizers`` library.

Every dlmbench vocabulary reserves the same five special tokens at fixed ids
(``[PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3, [MASK]=4``) so that absorbing-state models find
their mask inside the vocabulary and EOS handling is the same for every task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers, decoders

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(len(SPECIAL_TOKENS))


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
