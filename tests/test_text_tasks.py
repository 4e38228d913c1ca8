"""The local real-text tasks: layouts, splits, the on-disk cache, and the KJV tasks."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dlmbench.context import RunContext
from dlmbench.errors import ConfigError
from dlmbench.plugins import build_registry, get_plugin_manager
from dlmbench.tasks import layout, rows
from dlmbench.tasks.corpus import CorpusTask
from dlmbench.tasks.text import KJVSummarizeTask, KJVTask, KJVTranslateTask, PairsTask, TextTask

WORDS = [f"w{i}" for i in range(60)] + "the a of and to in is was he it".split()


@pytest.fixture(autouse=True)
def ctx(tmp_path, monkeypatch) -> RunContext:
    monkeypatch.chdir(tmp_path)  # a load without a context caches in ./.dlmbench-cache: keep it here
    return RunContext(cache=tmp_path / "cache")


@pytest.fixture
def task_cache(ctx) -> Path:
    return ctx.tasks


def sentences(n: int, seed: int = 0, lo: int = 1, hi: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[str]]:
    docs = sentences(240)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(docs[:100]) + "\n\n  \n" + "\n".join(docs[100:]) + "\n")
    return path, docs


@pytest.fixture
def pair_file(tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    src, tgt = sentences(200, 1, 1, 20), sentences(200, 2, 1, 12)
    pairs = list(zip(src, [t.upper() for t in tgt]))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"source": s, "target": t, "id": i}) + "\n" for i, (s, t) in enumerate(pairs)))
    return path, pairs


def test_registered_as_builtins():
    reg = build_registry(get_plugin_manager(autoload=False))
    for name in ("text", "pairs", "kjv", "kjv-es", "kjv-summarize", "owt", "wmt14-de-en", "wmt14-en-de", "xsum"):
        assert name in reg.tasks
    cls, arg = reg.task("text:some/file.txt")
    assert cls is TextTask and arg == "some/file.txt"
    assert TextTask.default_metrics == ("gen-ppl", "unigram-entropy")
    assert PairsTask.default_metrics == ("bleu", "rouge") and PairsTask.conditional


def test_wrap_packing_is_exact(corpus, ctx):
    path, docs = corpus
    seq_len = 16
    data = TextTask(TextTask.Config(vocab_size=300, valid_documents=40), str(path)).load(seq_len, 0, 0, context=ctx)
    tok, spec = data.tokenizer, data.spec
    assert spec.vocab_size == tok.vocab_size <= 300 and spec.prefix_len == 0 and data.eval_prefixes is None
    for rows, split in ((data.train, docs[:-40]), (data.valid, docs[-40:])):
        assert rows.dtype == torch.int64 and rows.shape[1] == seq_len
        assert (rows[:, 0] == tok.bos_id).all() and (rows[:, -1] == tok.eos_id).all()
        stream = [i for d in split for i in tok.encode(d) + [tok.eos_id]]
        body = rows[:, 1:-1].reshape(-1).tolist()
        # every token of every document, once, in order; only the incomplete tail block is dropped
        assert body == stream[: len(body)] and len(stream) - len(body) < seq_len - 2
    assert data.info["train_documents"] == 200 and data.info["valid_documents"] == 40


def test_pack_wrap_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(5, 50, size=rng.integers(0, 40))) for _ in range(100)]
    rows, tail = layout.pack_wrap(docs, 12, 2, 3)
    packer = layout.WrapPacker(12, 2, 3)
    streamed = np.concatenate([packer.add(docs[i: i + 7]) for i in range(0, 100, 7)])
    assert np.array_equal(rows, streamed) and packer.remainder == tail
    assert rows.shape[0] * 10 + tail == sum(len(d) + 1 for d in docs)


def test_pad_layout(corpus, ctx):
    path, docs = corpus
    cfg = TextTask.Config(vocab_size=300, valid_documents=40, packing="pad")
    data = TextTask(cfg, str(path)).load(12, 0, 0, context=ctx)
    tok = data.tokenizer
    assert data.train.shape == (200, 12) and data.valid.shape == (40, 12)
    for row, doc in zip(data.train.tolist(), docs):
        ids = tok.encode(doc)[:11]
        assert row == ids + [tok.eos_id] * (12 - len(ids))
    assert data.info["train_truncated_documents"] > 0


def test_jsonl_corpus_and_errors(tmp_path, ctx):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"body": s}) + "\n" for s in sentences(50)))
    cfg = TextTask.Config(vocab_size=280, text_field="body", valid_documents=5)
    data = TextTask(cfg, str(path)).load(8, 0, 0, context=ctx)
    assert data.info["documents"] == 50
    with pytest.raises(ConfigError, match="no field 'text'"):
        TextTask(TextTask.Config(cache=False), str(path)).load(8, 0, 0, context=ctx)
    with pytest.raises(ConfigError, match="text:PATH"):
        TextTask().load(8, 0, 0, context=ctx)
    with pytest.raises(ConfigError, match="not a file"):
        TextTask(argument=str(tmp_path / "missing.txt")).load(8, 0, 0, context=ctx)
    with pytest.raises(ConfigError, match="leaves no training data"):
        TextTask(TextTask.Config(valid_documents=50, text_field="body"), str(path)).load(8, 0, 0, context=ctx)
    with pytest.raises(ValidationError):
        TextTask.Config(vocab_sise=100)


def test_conditional_prefix_layout(pair_file, ctx):
    path, pairs = pair_file
    cfg = PairsTask.Config(vocab_size=300, valid_documents=30)
    data = PairsTask(cfg, str(path)).load(24, 10, seed=0, context=ctx)
    tok, spec = data.tokenizer, data.spec
    assert spec.prefix_len == 12 and spec.conditional
    assert data.train.shape == (170, 24) and data.valid.shape == (30, 24)
    assert data.eval_prefixes.shape == (10, 12) and len(data.references) == len(data.sources) == 10

    def padded(s: str, width: int) -> list[int]:
        ids = tok.encode(s)[: width - 1]
        return ids + [tok.eos_id] * (width - len(ids))

    for row, (s, t) in zip(data.train.tolist(), pairs):
        assert row == padded(s, 12) + padded(t, 12)
    valid = pairs[-30:]
    for prefix, src, ref in zip(data.eval_prefixes.tolist(), data.sources, data.references):
        assert (src, ref) in valid  # held out: from the validation split
        assert prefix == padded(src, 12)
    # target_len takes precedence over source_fraction
    other_cfg = PairsTask.Config(vocab_size=300, valid_documents=30, target_len=6)
    other = PairsTask(other_cfg, str(path)).load(24, 4, 0, context=ctx)
    assert other.spec.prefix_len == 18 and other.eval_prefixes.shape == (4, 18)
    with pytest.raises(ConfigError, match="each side needs at least 2"):
        PairsTask(PairsTask.Config(target_len=23), str(path)).load(24, 4, 0, context=ctx)


def test_split_determinism(pair_file, ctx):
    path, pairs = pair_file
    cfg = PairsTask.Config(vocab_size=300, valid_documents=30, cache=False)
    a = PairsTask(cfg, str(path)).load(24, 10, seed=0, context=ctx)
    b = PairsTask(cfg, str(path)).load(24, 10, seed=0, context=ctx)
    c = PairsTask(cfg, str(path)).load(24, 10, seed=1, context=ctx)
    assert a.sources == b.sources and torch.equal(a.eval_prefixes, b.eval_prefixes)
    assert torch.equal(a.train, c.train) and a.sources != c.sources
    order = [s for s, _ in pairs[-30:]]
    assert [order.index(s) for s in a.sources] == sorted(order.index(s) for s in a.sources)
    train_sources = {s for s, _ in pairs[:-30]}
    assert not set(a.sources) & train_sources
    full = PairsTask(cfg, str(path)).load(24, 30, seed=5, context=ctx)  # the whole validation split, in order
    assert full.sources == order
    with pytest.raises(ConfigError, match="num_samples"):
        PairsTask(cfg, str(path)).load(24, 31, seed=0, context=ctx)


def test_drop_overlong(pair_file, ctx):
    path, _ = pair_file
    cfg = PairsTask.Config(vocab_size=300, valid_documents=60, drop_overlong=True, cache=False)
    data = PairsTask(cfg, str(path)).load(32, 5, 0, context=ctx)
    eos = data.tokenizer.eos_id
    assert (data.train[:, 15] == eos).all() and (data.train[:, -1] == eos).all()
    assert (data.eval_prefixes[:, -1] == eos).all()
    assert data.info["train_dropped_overlong"] > 0 and data.info["train_truncated_sources"] == 0


def test_cache_hit_and_invalidation(corpus, task_cache, monkeypatch, ctx):
    path, _ = corpus
    cfg = TextTask.Config(vocab_size=300, valid_documents=40)
    first = TextTask(cfg, str(path)).load(16, 0, 0, context=ctx)
    assert first.info["cache"] == "miss" and len(list(task_cache.iterdir())) == 1

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt despite a cached entry")

    monkeypatch.setattr(CorpusTask, "_build", boom)
    again = TextTask(cfg, str(path)).load(16, 0, 0, context=ctx)
    assert again.info["cache"] == "hit"
    assert torch.equal(first.train, again.train) and torch.equal(first.valid, again.valid)
    assert again.tokenizer.to_str() == first.tokenizer.to_str() and again.spec == first.spec
    assert again.fingerprint() == first.fingerprint()
    # the cache flag itself is not part of the key
    same = TextTask.Config(vocab_size=300, valid_documents=40, cache=True)
    assert TextTask(same, str(path)).load(16, 0, 0, context=ctx).info["cache"] == "hit"
    monkeypatch.undo()
    # another seq_len, or a touched source file, is another entry
    assert TextTask(cfg, str(path)).load(20, 0, 0, context=ctx).info["cache"] == "miss"
    os.utime(path, ns=(1, 1))
    assert TextTask(cfg, str(path)).load(16, 0, 0, context=ctx).info["cache"] == "miss"
    assert not [p for p in task_cache.iterdir() if p.name.endswith(".tmp")]


def test_conditional_cache_round_trip(pair_file, ctx):
    path, _ = pair_file
    cfg = PairsTask.Config(vocab_size=300, valid_documents=30)
    a = PairsTask(cfg, str(path)).load(24, 10, 0, context=ctx)
    b = PairsTask(cfg, str(path)).load(24, 10, 0, context=ctx)
    assert b.info["cache"] == "hit" and b.sources == a.sources and b.references == a.references
    assert torch.equal(a.eval_prefixes, b.eval_prefixes) and b.spec.prefix_len == 12


def test_missing_sword_module_names_the_fix(ctx):
    with pytest.raises(ConfigError, match="apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc"):
        KJVTask(KJVTask.Config(module="NoSuchBible")).load(16, 0, 0, context=ctx)


KJV_DIR = Path("/usr/share/sword/modules/texts/ztext/engKJV2006eb")
RV_DIR = Path("/usr/share/sword/modules/texts/ztext/spaRV1909eb")
MHCC_DIR = Path("/usr/share/sword/modules/comments/zcom/mhcc")


@pytest.mark.usefixtures("sword_decoded_once")  # each module decoded once a session
@pytest.mark.skipif(not (KJV_DIR.is_dir() and RV_DIR.is_dir() and MHCC_DIR.is_dir()),
                    reason="apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc")
def test_kjv_tasks_on_the_real_modules(ctx):
    kjv = KJVTask(KJVTask.Config(vocab_size=512, max_documents=600, valid_documents=60)).load(32, 0, 0, context=ctx)
    assert kjv.tokenizer.decode(kjv.train[0, 1:-1].tolist()).startswith("In the beginning God created")
    es_cfg = KJVTranslateTask.Config(vocab_size=512, max_documents=400, valid_documents=40)
    es = KJVTranslateTask(es_cfg).load(64, 8, 0, context=ctx)
    assert es.spec.prefix_len == 32 and es.eval_prefixes.shape == (8, 32) and es.info["pairs"] == 400
    first = es.tokenizer.decode(es.train[0, 32:].tolist())
    assert first.startswith("EN el principio")
    summ = KJVSummarizeTask(KJVSummarizeTask.Config(vocab_size=512, max_documents=300)).load(96, 8, 0, context=ctx)
    assert summ.spec.prefix_len == 64 and summ.info["valid_pairs"] == 30
    assert summ.tokenizer.decode(summ.train[0, 64:].tolist()) == "God creates heaven and earth."


def test_large_cached_arrays_are_memory_mapped(corpus, monkeypatch, ctx):
    path, _ = corpus
    cfg = TextTask.Config(vocab_size=300, valid_documents=40)
    built = TextTask(cfg, str(path)).load(16, 0, 0, context=ctx)
    monkeypatch.setattr(rows, "MEMMAP_BYTES", 0)
    mapped = TextTask(cfg, str(path)).load(16, 0, 0, context=ctx)
    assert mapped.info["cache"] == "hit" and torch.equal(mapped.train, built.train)
    assert mapped.fingerprint() == built.fingerprint()
    mapped.train[0, 0] = 7  # copy-on-write: the cache file is untouched
    assert TextTask(cfg, str(path)).load(16, 0, 0, context=ctx).train[0, 0] == built.tokenizer.bos_id


def test_damaged_cache_entry_is_rebuilt(corpus, task_cache, ctx):
    path, _ = corpus
    cfg = TextTask.Config(vocab_size=300, valid_documents=40)
    first = TextTask(cfg, str(path)).load(16, 0, 0, context=ctx)
    (entry,) = task_cache.iterdir()
    (entry / "train.bin").write_bytes(b"torn")
    again = TextTask(cfg, str(path)).load(16, 0, 0, context=ctx)
    assert again.info["cache"] == "miss" and "rebuilt_after" in again.info
    assert torch.equal(again.train, first.train)
