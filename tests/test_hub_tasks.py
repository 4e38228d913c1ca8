"""The paper-scale loaders (owt, wmt14-*, xsum) on small local files in the real schemas,
and their offline failure mode. Nothing here touches the network."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch

from dlmbench.context import RunContext
from dlmbench.errors import ConfigError, HubUnavailableError
from dlmbench.tasks import hub

pytest.importorskip("datasets")

WORDS = [f"w{i}" for i in range(80)] + "the a of and to in is was der die das und".split()


@pytest.fixture(autouse=True)
def ctx(tmp_path, monkeypatch) -> RunContext:
    """An offline run (the HF libraries are switched offline too, as the CLI does)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # a load without a context caches in ./.dlmbench-cache: keep it here
    return RunContext(cache=tmp_path / "cache", offline=True, offline_reason="HF_HUB_OFFLINE is set")


def sent(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def owt_file(tmp_path) -> tuple[str, list[str]]:
    rng = random.Random(0)
    docs = [sent(rng, 3, 60) for _ in range(120)]
    return jsonl(tmp_path / "owt.jsonl", [{"text": d} for d in docs]), docs


@pytest.fixture
def wmt_files(tmp_path) -> dict[str, str]:
    rng = random.Random(1)
    out = {}
    for split, n in (("train", 150), ("validation", 20), ("test", 25)):
        rows = [{"translation": {"de": "de " + sent(rng, 2, 20), "en": "en " + sent(rng, 2, 20)}} for _ in range(n)]
        out[split] = jsonl(tmp_path / f"wmt14-{split}.jsonl", rows)
    return out


@pytest.fixture
def xsum_files(tmp_path) -> dict[str, str]:
    rng = random.Random(2)
    out = {}
    for split, n in (("train", 80), ("validation", 12), ("test", 15)):
        rows = [{"document": sent(rng, 20, 120), "summary": sent(rng, 4, 15), "id": f"{split}{i}"} for i in range(n)]
        out[split] = jsonl(tmp_path / f"xsum-{split}.jsonl", rows)
    return out


def test_owt_wrap_on_local_files(owt_file, tmp_path, ctx):
    path, docs = owt_file
    cfg = hub.OWTConfig(data_files=path, tokenizer="bpe", vocab_size=320, valid_documents=20,
                        hf_cache_dir=str(tmp_path / "hf"))
    data = hub.OWTTask(cfg).load(32, 0, 0, context=ctx)
    tok = data.tokenizer
    assert data.spec.prefix_len == 0 and data.spec.vocab_size == tok.vocab_size
    for rows, split in ((data.train, docs[:-20]), (data.valid, docs[-20:])):  # train[:-N] / last N
        assert (rows[:, 0] == tok.bos_id).all() and (rows[:, -1] == tok.eos_id).all()
        stream = [i for d in split for i in tok.encode(d) + [tok.eos_id]]
        body = rows[:, 1:-1].reshape(-1).tolist()
        assert body == stream[: len(body)] and len(stream) - len(body) < 30
    again = hub.OWTTask(cfg).load(32, 0, 0, context=ctx)
    assert again.info["cache"] == "hit" and torch.equal(again.train, data.train)
    capped = hub.OWTTask(cfg.model_copy(update={"max_documents": 60, "cache": False})).load(32, 0, 0, context=ctx)
    assert capped.info["train_documents"] == 40 and capped.info["valid_documents"] == 20


def _gpt2_like_tokenizer(directory: Path, texts: list[str]) -> Path:
    """A byte-level BPE saved as a transformers tokenizer whose EOS is also BOS and which
    has no mask or pad token, like GPT-2."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(directory)
    return directory


def test_owt_pretrained_tokenizer_convention(owt_file, tmp_path, ctx):
    path, docs = owt_file
    tok_dir = _gpt2_like_tokenizer(tmp_path / "tok", docs)
    cfg = hub.OWTConfig(data_files=path, tokenizer=str(tok_dir), valid_documents=20,
                        hf_cache_dir=str(tmp_path / "hf"))
    data = hub.OWTTask(cfg).load(24, 0, 0, context=ctx)
    spec, tok = data.spec, data.tokenizer
    eos = tok.backend.token_to_id("<|endoftext|>")
    base = eos + 1  # the tokenizer's own vocabulary (GPT-2: 50257)
    assert spec.bos_id == spec.eos_id == eos  # GPT-2: <|endoftext|> is both
    assert spec.mask_id == spec.pad_id == base and spec.vocab_size == base + 1  # one added special
    assert (data.train[:, 0] == eos).all() and (data.train[:, -1] == eos).all()
    assert int(data.train.max()) < base  # the added id never occurs in the data
    assert tok.decode(data.train[0, 1:-1].tolist()).startswith(docs[0][:20])
    cached = hub.OWTTask(cfg).load(24, 0, 0, context=ctx)  # the special ids survive the cache
    assert cached.info["cache"] == "hit" and cached.spec == spec and cached.tokenizer.mask_id == base


@pytest.mark.parametrize("task_cls,src,tgt", [(hub.WMT14DeEnTask, "de", "en"), (hub.WMT14EnDeTask, "en", "de")])
def test_wmt14_local_files(wmt_files, tmp_path, task_cls, src, tgt, ctx):
    cfg = hub.WMT14Config(data_files=wmt_files, tokenizer="bpe", vocab_size=320, hf_cache_dir=str(tmp_path / "hf"))
    data = task_cls(cfg).load(40, 25, seed=0, context=ctx)  # 20 + 20, as 64 + 64 at seq_len 128
    assert data.spec.prefix_len == 20 and data.train.shape == (150, 40) and data.valid.shape == (20, 40)
    assert data.eval_prefixes.shape == (25, 20)
    test = [json.loads(line)["translation"] for line in Path(wmt_files["test"]).read_text().splitlines()]
    assert data.sources == [r[src] for r in test] and data.references == [r[tgt] for r in test]
    tok = data.tokenizer
    ids = tok.encode(data.sources[0])[:19]
    assert data.eval_prefixes[0].tolist() == ids + [tok.eos_id] * (20 - len(ids))
    train0 = json.loads(Path(wmt_files["train"]).read_text().splitlines()[0])["translation"]
    assert tok.decode(data.train[0, :20].tolist()).startswith(train0[src][:10])
    sub = task_cls(cfg).load(40, 10, seed=3, context=ctx)  # a seeded subset of the test split, in order
    assert len(sub.sources) == 10 and all(s in data.sources for s in sub.sources)
    with pytest.raises(ConfigError, match="num_samples"):
        task_cls(cfg).load(40, 26, seed=0, context=ctx)


def test_xsum_local_files_and_carved_validation(xsum_files, tmp_path, ctx):
    cfg = hub.XSumConfig(data_files=xsum_files, tokenizer="bpe", vocab_size=320, hf_cache_dir=str(tmp_path / "hf"))
    data = hub.XSumTask(cfg).load(96, 15, seed=0, context=ctx)  # target_len=64: 32 + 64 here, 1024 + 64 at 1088
    assert data.spec.prefix_len == 32 and data.eval_prefixes.shape == (15, 32)
    test = [json.loads(line) for line in Path(xsum_files["test"]).read_text().splitlines()]
    assert data.references == [r["summary"] for r in test] and data.sources == [r["document"] for r in test]
    assert data.info["train_truncated_sources"] > 0
    only_train = hub.XSumConfig(data_files=xsum_files["train"], tokenizer="bpe", vocab_size=320,
                                valid_documents=10, hf_cache_dir=str(tmp_path / "hf"))
    carved = hub.XSumTask(only_train).load(96, 5, seed=0, context=ctx)
    assert carved.info["valid_carved_from_train"] and carved.train.shape[0] == 70 and carved.valid.shape[0] == 10


def test_hub_dataset_fails_fast_offline(tmp_path, monkeypatch, ctx):
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"Skylion007/openwebtext.*offline \(HF_HUB_OFFLINE is set\)"):
        hub.OWTTask(hub.OWTConfig(tokenizer="bpe", hf_cache_dir=str(tmp_path / "hf"))).load(1024, 0, 0, context=ctx)
    with pytest.raises(HubUnavailableError, match="wmt/wmt14"):
        wmt = hub.WMT14Config(tokenizer="bpe", hf_cache_dir=str(tmp_path / "hf"))
        hub.WMT14DeEnTask(wmt).load(128, 8, 0, context=ctx)
    assert time.perf_counter() - start < 10


def test_hub_tokenizer_fails_fast_offline(owt_file, tmp_path, ctx):
    path, _ = owt_file
    pytest.importorskip("transformers")
    with pytest.raises(HubUnavailableError, match="tokenizer 'gpt2'"):
        hub.OWTTask(hub.OWTConfig(data_files=path, valid_documents=20)).load(32, 0, 0, context=ctx)


def test_without_datasets_names_the_extra(owt_file, monkeypatch, ctx):
    path, _ = owt_file
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'dlmbench\[datasets\]'"):
        hub.OWTTask(hub.OWTConfig(data_files=path, tokenizer="bpe", cache=False)).load(32, 0, 0, context=ctx)


def test_bad_data_files(tmp_path, ctx):
    with pytest.raises(ConfigError, match="not a file"):
        hub.OWTTask(hub.OWTConfig(data_files=str(tmp_path / "nope.jsonl"), tokenizer="bpe")).load(32, 0, 0, context=ctx)
    odd = tmp_path / "data.bin"
    odd.write_text("x")
    with pytest.raises(ConfigError, match="data_format"):
        hub.OWTTask(hub.OWTConfig(data_files=str(odd), tokenizer="bpe")).load(32, 0, 0, context=ctx)
