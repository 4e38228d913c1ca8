"""Stand-ins for the ``t5-small`` and ``gpt2`` tokenizers, trained locally on given text.

ELF reads text through T5's SentencePiece-unigram vocabulary, MDLM and Duo through
GPT-2's byte-level BPE. Tests, and users without the Hugging Face hub, use these
stand-ins in place of the hub tokenizers: the same kind of model, the same special
ids and the same sizes (so embedding shapes match the reference checkpoints), but
not the same pieces, since they are trained on whatever text is given.

Each builder writes a directory that ``transformers.AutoTokenizer.from_pretrained``
loads as a fast tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``), which is how :func:`dlmbench.tasks.tokenizers.pretrained_tokenizer`
reads a local tokenizer. A small corpus cannot train tens of thousands of pieces, so
the vocabulary is filled up to the requested size with entries that no text can
produce: they contain a plain space, which neither pre-tokenizer ever leaves in a
piece (Metaspace turns spaces into ``▁``, ByteLevel into ``Ġ``), and no BPE merge
yields them. Building is deterministic: the same texts give the same files, byte for
byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
T5_SPECIALS = (T5_PAD, T5_EOS, T5_UNK)  # ids 0, 1, 2
T5_EXTRA_IDS = 100
GPT2_EOT = "<|endoftext|>"

#: Decimals kept of a trained piece's score (see :func:`canonical_pieces`).
SCORE_DIGITS = 4
#: The step ``UnigramTrainer`` puts between the scores of the characters it re-adds.
REQUIRED_STEP = 1e-4
#: Score of a filler piece of the unigram vocabulary: far below any trained piece.
UNUSED_SCORE = -1.0e4


def unused_piece(i: int) -> str:
    """The ``i``-th filler entry; the space keeps it out of reach of any pre-tokenized text."""
    return f"<unused {i}>"


def t5_extra_id(i: int) -> str:
    return f"<extra_id_{i}>"


def t5_normalizer() -> normalizers.Normalizer:
    """NFKC, any whitespace run to one space, no leading or trailing space (as SentencePiece's
    default normalization does: T5 cannot represent newlines or repeated spaces)."""
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(left=True, right=True),
    ])


def canonical_pieces(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The trained pieces in an order and with scores that depend only on the texts.

    ``UnigramTrainer`` is not reproducible as it stands: its parallel EM leaves ~1e-14 of
    noise in the scores, and the characters it must keep but had pruned are given
    ``min_score + k * 1e-4`` in hash-set order. Those characters are re-scored in code
    point order, every score is rounded to :data:`SCORE_DIGITS` decimals, and pieces are
    sorted by score (best first), then by text.
    """
    if not pieces:
        return []
    low = min(s for _, s in pieces)
    chars = [(p, (s - low) / REQUIRED_STEP) for p, s in pieces if len(p) == 1]
    readded = sorted(p for p, k in chars if 0 <= round(k) < len(chars) and abs(k - round(k)) < 1e-5)
    scores = dict(pieces) | {p: low + k * REQUIRED_STEP for k, p in enumerate(readded)}
    rounded = [(p, round(s, SCORE_DIGITS)) for p, s in scores.items()]
    return sorted(rounded, key=lambda ps: (-ps[1], ps[0]))


def t5_standin(texts: Iterable[str], directory: str | Path, vocab_size: int = 32_100) -> Path:
    """A SentencePiece-unigram tokenizer laid out like T5's, written to ``directory``.

    Ids: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then the trained pieces, then
    unreachable filler up to ``vocab_size - 100``, then ``<extra_id_99>`` ..
    ``<extra_id_0>`` (``<extra_id_0>`` is the last id), so ``len(tokenizer) == vocab_size``.
    No BOS and no mask token. Encoding with special tokens appends ``</s>`` (as T5 does);
    without them it does not. ``decode(encode(t)) == " ".join(nfkc(t).split())`` for
    text whose characters all occur in ``texts``.
    """
    texts = list(texts)
    pieces = vocab_size - T5_EXTRA_IDS
    normalizer = t5_normalizer()
    pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = {c for t in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))
                for c in word}
    needed = len(T5_SPECIALS) + len(alphabet) + 1 + T5_EXTRA_IDS
    if vocab_size < needed:
        raise ValueError(
            f"t5_standin: vocab_size={vocab_size} is too small: the {len(T5_SPECIALS)} specials, the "
            f"{len(alphabet)} characters of the texts, one piece and the {T5_EXTRA_IDS} extra ids need "
            f"at least {needed}")

    trainer_tok = Tokenizer(models.Unigram())
    trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.UnigramTrainer(vocab_size=pieces, special_tokens=list(T5_SPECIALS),
                                      unk_token=T5_UNK, show_progress=False)
    trainer_tok.train_from_iterator(texts, trainer=trainer)
    trained: list[tuple[str, float]] = [(p, s) for p, s in json.loads(trainer_tok.to_str())["model"]["vocab"]]
    if [p for p, _ in trained[: len(T5_SPECIALS)]] != list(T5_SPECIALS):
        raise RuntimeError(f"t5_standin: the trainer did not put {T5_SPECIALS} first")
    trained = trained[: len(T5_SPECIALS)] + canonical_pieces(trained[len(T5_SPECIALS):])
    if len(trained) > pieces:
        raise ValueError(f"t5_standin: vocab_size={vocab_size} is too small: training kept "
                         f"{len(trained)} pieces, more than the {pieces} left beside the extra ids")
    filler = [(unused_piece(i), UNUSED_SCORE) for i in range(pieces - len(trained))]
    extras = [(t5_extra_id(i), 0.0) for i in reversed(range(T5_EXTRA_IDS))]

    tok = Tokenizer(models.Unigram(trained + filler + extras, unk_id=T5_SPECIALS.index(T5_UNK), byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}",
        special_tokens=[(T5_EOS, T5_SPECIALS.index(T5_EOS))])
    extra_names = [p for p, _ in extras]
    tok.add_special_tokens([*T5_SPECIALS, *extra_names])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"t5_standin: built {tok.get_vocab_size()} entries, not {vocab_size}")
    special = {"pad_token": T5_PAD, "eos_token": T5_EOS, "unk_token": T5_UNK,
               "additional_special_tokens": extra_names}
    return _write(tok, directory, special, {"model_max_length": 512})


def gpt2_standin(texts: Iterable[str], directory: str | Path, vocab_size: int = 50_257) -> Path:
    """A byte-level BPE tokenizer laid out like GPT-2's, written to ``directory``.

    Ids: the 256 byte symbols and the trained merges, then unreachable filler, then
    ``<|endoftext|>`` as the last id (``vocab_size - 1``), which is BOS, EOS and UNK.
    No pad and no mask token. ``decode(encode(t)) == t`` for any text.
    """
    texts = list(texts)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"gpt2_standin: vocab_size={vocab_size} is too small: the {len(alphabet)} byte "
                         f"symbols and {GPT2_EOT} need at least {len(alphabet) + 1}")
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=alphabet, special_tokens=[],
                                  show_progress=False)
    trainer_tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    if len(vocab) > vocab_size - 1:
        raise RuntimeError(f"gpt2_standin: the trainer kept {len(vocab)} entries, more than {vocab_size - 1}")
    for i in range(vocab_size - 1 - len(vocab)):
        vocab[unused_piece(i)] = len(vocab)
    vocab[GPT2_EOT] = vocab_size - 1

    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges))  # no ignore_merges: only merges make tokens
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([GPT2_EOT])
    if tok.get_vocab_size() != vocab_size or tok.token_to_id(GPT2_EOT) != vocab_size - 1:
        raise RuntimeError(f"gpt2_standin: built {tok.get_vocab_size()} entries, not {vocab_size}")
    special = {"bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT}
    return _write(tok, directory, special, {"model_max_length": 1024, "add_prefix_space": False})


def _write(tok: Tokenizer, directory: str | Path, special: dict[str, Any], config: dict[str, Any]) -> Path:
    """The three files ``AutoTokenizer`` reads; keys sorted so the bytes depend only on content."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=True)
    full = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            **config, **special}
    for name, data in (("tokenizer_config.json", full), ("special_tokens_map.json", special)):
        (out / name).write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                encoding="utf-8")
    return out
