"""The offline stand-ins for the T5 and GPT-2 tokenizers: sizes, special ids, kinds,
determinism and round trips, as ``AutoTokenizer`` and ``pretrained_tokenizer`` see them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers.pre_tokenizers import ByteLevel

from dlmbench.context import RunContext
from dlmbench.tasks.tokenizers import pretrained_tokenizer
from dlmbench.testing.tokenizers import gpt2_standin, t5_standin

SUBJECTS = ["the cat", "a dog", "my neighbour", "the old sailor", "every student", "the quick fox", "Anna",
            "Mr. Brown", "the committee", "a small child", "our teacher", "the river", "this machine",
            "the queen", "two birds", "Zoe", "the judge", "a young violinist"]
VERBS = ["sees", "carried", "will find", "painted", "remembers", "wrote about", "jumps over", "counted",
         "likes", "was looking for", "has built", "described", "sold", "followed", "ignored", "quizzed"]
OBJECTS = ["the red house", "a long letter", "seven apples", "the lazy dog", "an empty bottle",
           "the northern hills", "her brother's bicycle", "a strange noise", "the last train",
           "forty-two stones", "the morning paper", "a golden ring", "the broken window", "twelve questions",
           "the harbour", "Xavier's jacket", "the Victorian clock"]
TAILS = ["", " yesterday", " in the evening", " again and again", ", quietly", " before noon", " (twice)",
         " near the bridge", " with great care", "; nobody knew why", " at 3:15 pm", " on 4 July",
         " for 98 Kč", " — or so \"they\" said"]


def sentences(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}{rng.choice('.!?')}"
        out.append(s[0].upper() + s[1:])
    return out


LINES = sentences()
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standins")
    return {"t5": t5_standin(LINES, root / "t5"), "gpt2": gpt2_standin(LINES, root / "gpt2"),
            "t5-small": t5_standin(LINES, root / "t5-small", vocab_size=600),
            "gpt2-small": gpt2_standin(LINES, root / "gpt2-small", vocab_size=1000)}


def auto(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def loaded(directory: Path):
    return pretrained_tokenizer("t", str(directory), RunContext.create(device="cpu", offline=True))


def model_json(directory: Path) -> dict:
    return json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name, size", [("t5", 32_100), ("gpt2", 50_257), ("t5-small", 600), ("gpt2-small", 1000)])
def test_autotokenizer_sees_exactly_the_requested_size(built, name, size):
    hf = auto(built[name])
    assert len(hf) == size
    assert hf.backend_tokenizer.get_vocab_size() == size


def test_t5_standin_has_t5s_special_ids_and_extra_ids(built):
    hf = auto(built["t5"])
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2)
    assert hf.bos_token_id is None and hf.mask_token_id is None
    assert hf.convert_ids_to_tokens([32_099, 32_000]) == ["<extra_id_0>", "<extra_id_99>"]
    assert hf.convert_ids_to_tokens(31_999) != "<extra_id_100>"
    tok = loaded(built["t5"])
    assert tok.vocab_size == 32_101
    assert tok.special_ids() == {"pad_id": 0, "unk_id": 2, "bos_id": 1, "eos_id": 1, "mask_id": 32_100}


def test_gpt2_standin_has_gpt2s_special_ids(built):
    hf = auto(built["gpt2"])
    assert hf.convert_ids_to_tokens(50_256) == "<|endoftext|>"
    assert hf.eos_token_id == hf.bos_token_id == hf.unk_token_id == 50_256
    assert hf.pad_token_id is None and hf.mask_token_id is None
    tok = loaded(built["gpt2"])
    assert tok.vocab_size == 50_258  # the MDLM/Duo embedding rows
    assert tok.special_ids() == {"pad_id": 50_257, "unk_id": 50_256, "bos_id": 50_256, "eos_id": 50_256,
                                 "mask_id": 50_257}


def test_small_sizes_keep_the_layout(built):
    t5 = loaded(built["t5-small"])
    assert t5.special_ids() == {"pad_id": 0, "unk_id": 2, "bos_id": 1, "eos_id": 1, "mask_id": 600}
    assert t5.backend.id_to_token(599) == "<extra_id_0>"
    gpt2 = loaded(built["gpt2-small"])
    assert gpt2.special_ids() == {"pad_id": 1000, "unk_id": 999, "bos_id": 999, "eos_id": 999, "mask_id": 1000}


def test_the_kind_of_model_matches_the_reference(built):
    for name in ("t5", "t5-small"):
        data = model_json(built[name])
        assert data["model"]["type"] == "Unigram" and data["model"]["unk_id"] == 2
        assert data["pre_tokenizer"]["type"] == "Metaspace" and data["pre_tokenizer"]["replacement"] == "▁"
        assert data["decoder"]["type"] == "Metaspace"
    for name in ("gpt2", "gpt2-small"):
        data = model_json(built[name])
        assert data["model"]["type"] == "BPE" and data["model"]["merges"]
        assert data["pre_tokenizer"] == {**data["pre_tokenizer"], "type": "ByteLevel", "add_prefix_space": False}
        assert data["decoder"]["type"] == "ByteLevel"
        vocab = data["model"]["vocab"]
        assert set(ByteLevel.alphabet()) <= set(vocab)  # every byte has a symbol


def test_building_twice_gives_the_same_bytes(built, tmp_path):
    again = {"t5": t5_standin(LINES, tmp_path / "t5"), "gpt2": gpt2_standin(LINES, tmp_path / "gpt2")}
    for name, directory in again.items():
        for f in FILES:
            assert (directory / f).read_bytes() == (built[name] / f).read_bytes(), (name, f)


def test_different_texts_give_a_different_vocabulary(built, tmp_path):
    other = sentences(seed=1)[:50]
    assert (t5_standin(other, tmp_path / "t5") / FILES[0]).read_bytes() != (built["t5"] / FILES[0]).read_bytes()


@pytest.mark.parametrize("name", ["t5", "gpt2", "t5-small", "gpt2-small"])
def test_training_lines_round_trip_and_filler_is_never_emitted(built, name):
    tok = loaded(built[name])
    for line in LINES:
        ids = tok.encode(line)
        assert tok.decode(ids) == line
        assert tok.eos_id not in ids  # dlmbench encodes without special tokens
        pieces = [tok.backend.id_to_token(i) for i in ids]
        assert not [p for p in pieces if p.startswith(("<unused", "<extra_id"))], line


def test_gpt2_standin_round_trips_any_text(built):
    tok = loaded(built["gpt2"])
    text = "  Tabs\tand\nnew lines,   runs of spaces; ünïcödé ☃ and 漢字 "
    assert tok.decode(tok.encode(text)) == text


def test_t5_standin_normalises_whitespace_like_t5(built):
    tok = loaded(built["t5"])
    line = LINES[0]
    messy = "  " + line.replace(" ", " \t ").replace(".", ".\n") + "\n"
    assert tok.encode(messy) == tok.encode(line)
    assert tok.decode(tok.encode(messy)) == " ".join(messy.split())
    hf = auto(built["t5"])
    assert hf(line).input_ids[-1] == 1  # like T5, the tokenizer itself ends a sequence with </s>


@pytest.mark.parametrize("build, size", [(t5_standin, 120), (t5_standin, 32), (gpt2_standin, 256)])
def test_a_vocabulary_too_small_for_the_specials_and_alphabet_is_refused(build, size, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        build(LINES, tmp_path / "tok", vocab_size=size)
    assert not (tmp_path / "tok").exists()
