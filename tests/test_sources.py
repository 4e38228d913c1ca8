"""The source protocol, for every kind of source: local text and pairs files, the SWORD
modules, and Hugging Face datasets (read from local json/parquet files, offline)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from dlmbench.context import RunContext
from dlmbench.errors import ConfigError
from dlmbench.tasks import sources
from dlmbench.tasks.tokenizers import TokenizerChoice

CTX = RunContext(cache=Path("unused"), offline=True, offline_reason="tests run offline")


def check_protocol(source: Any, item: type) -> dict[str, list]:
    """What every source promises: a JSON-able stamp, a describe() dict, and splits whose
    length, streaming and windows agree. Returns each split's items."""
    json.dumps(source.stamp())
    assert isinstance(source.describe(), dict)
    out = {}
    for name, split in source.open(CTX).items():
        items = list(split)
        assert len(split) == len(items) > 0
        assert all(isinstance(x, item) for x in items)
        if item is tuple:
            assert all(len(x) == 2 and all(isinstance(s, str) for s in x) for x in items)
        lo, hi = len(items) // 3, len(items) - 1
        assert list(split.window(lo, hi)) == items[lo:hi] and len(split.window(lo, hi)) == hi - lo
        assert list(split.window(0, len(items))) == items
        out[name] = items
    return out


def test_text_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("  first doc \n\n   \nsecond\nthird\n")
    source = sources.TextFile("text", str(txt), "text")
    assert check_protocol(source, str) == {"train": ["first doc", "second", "third"]}
    assert source.describe() == {"path": str(txt)}
    ((path, size, mtime),) = source.stamp()["files"]
    assert path == str(txt.resolve()) and size == txt.stat().st_size
    os.utime(txt, ns=(1, 1))
    assert source.stamp() != {"files": [[path, size, mtime]]}  # a touched file is other data
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"body": " a "}) + "\n\n" + json.dumps({"body": ""}) + "\n" + json.dumps({"body": "b"}))
    assert check_protocol(sources.TextFile("text", str(gz), "body"), str) == {"train": ["a", "b"]}
    with pytest.raises(ConfigError, match="no field 'text'"):
        sources.TextFile("text", str(gz), "text").open(CTX)


def test_pairs_file_strips_and_skips_empty_sides(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"s": " one ", "t": "uno"}, {"s": "two", "t": "  "}, {"s": None, "t": "x"}, {"s": "three", "t": "tres"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = sources.PairsFile("pairs", str(path), "s", "t")
    assert check_protocol(source, tuple) == {"train": [("one", "uno"), ("three", "tres")]}
    with pytest.raises(ConfigError, match="needs a file"):
        sources.PairsFile("pairs", None, "s", "t")


SWORD = Path("/usr/share/sword/modules")
needs_sword = pytest.mark.skipif(
    not all((SWORD / d).is_dir() for d in ("texts/ztext/engKJV2006eb", "texts/ztext/spaRV1909eb",
                                           "comments/zcom/mhcc")),
    reason="apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc")


@pytest.mark.usefixtures("sword_decoded_once")  # each module decoded once a session
@needs_sword
def test_sword_sources():
    verses = sources.BibleText("engKJV2006eb", "verse")
    docs = check_protocol(verses, str)["train"]
    assert len(docs) == 31_102 and docs[0].startswith("In the beginning God created")
    stamp = verses.stamp()["files"]
    assert {Path(p).name for p, _, _ in stamp} == {f"{t}.{e}" for t in ("ot", "nt") for e in ("bzs", "bzv", "bzz")}
    assert all(Path(p).stat().st_size == size for p, size, _ in stamp)
    chapters = check_protocol(sources.BibleText("engKJV2006eb", "chapter"), str)["train"]
    assert len(chapters) == 1189 and chapters[0].startswith(docs[0] + " " + docs[1])
    parallel = sources.ParallelBibles("engKJV2006eb", "spaRV1909eb")
    pairs = check_protocol(parallel, tuple)["train"]
    assert len(pairs) == 31_084 and pairs[0][1].startswith("EN el principio")
    assert parallel.describe() == {"source_module": "engKJV2006eb", "target_module": "spaRV1909eb"}
    outlines = sources.CommentaryOutlines("engKJV2006eb", "MHCC")
    summaries = check_protocol(outlines, tuple)["train"]
    assert summaries[0][1] == "God creates heaven and earth."
    assert outlines.describe()["outline_rows"]["pairs"] == len(summaries)


def test_sword_source_names_the_fix():
    with pytest.raises(ConfigError, match="apt-get install sword-text-kjv"):
        sources.BibleText("NoSuchBible", "verse").stamp()


def test_hub_sources_on_local_json_and_parquet(tmp_path):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from dlmbench.tasks import hub

    docs = [f"document {i}" for i in range(25)] + [None]
    json_path = tmp_path / "owt.jsonl"
    json_path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    task = hub.OWTTask(hub.OWTConfig(data_files=str(json_path), hf_cache_dir=str(tmp_path / "hf")))
    source = task.source()
    assert check_protocol(source, str) == {"train": docs[:-1] + [""]}  # None reads as ""
    assert source.stamp() == {"train": [[str(json_path.resolve()), json_path.stat().st_size,
                                         json_path.stat().st_mtime_ns]]}
    assert source.describe() == {"dataset": "data_files"}

    files = {}
    for split, n in (("train", 12), ("test", 5)):
        table = pa.table({"translation": [{"de": f"de {split} {i}", "en": f"en {split} {i}"} for i in range(n)]})
        pq.write_table(table, tmp_path / f"{split}.parquet")
        files[split] = str(tmp_path / f"{split}.parquet")
    wmt = hub.WMT14EnDeTask(hub.WMT14Config(data_files=files, hf_cache_dir=str(tmp_path / "hf"))).source()
    splits = check_protocol(wmt, tuple)
    assert splits["test"][3] == ("en test 3", "de test 3")  # en -> de
    assert set(wmt.stamp()) == {"train", "test"}


def test_hub_source_stamp_names_the_dataset_without_the_network():
    from dlmbench.tasks import hub

    source = hub.WMT14DeEnTask(hub.WMT14Config()).source()
    assert source.stamp() == {"dataset": "wmt/wmt14", "config": "de-en"}
    assert source.describe() == {"dataset": "wmt/wmt14"}


def test_tokenizer_choice_stamp(tmp_path):
    assert TokenizerChoice("bpe", 300).stamp() == "bpe"
    assert TokenizerChoice("gpt2").stamp() == "gpt2"
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    stamp = TokenizerChoice(str(tmp_path / "tok")).stamp()
    assert [Path(p).name for p, _, _ in stamp] == ["tokenizer.json"]
    (tmp_path / "tok" / "tokenizer.json").write_text("{ }")
    assert TokenizerChoice(str(tmp_path / "tok")).stamp() != stamp  # a changed vocabulary is other data


def test_the_same_text_gives_the_same_rows_from_a_file_and_from_a_dataset(tmp_path):
    """Local files and hub datasets feed one corpus task and one parallel-corpus task: the
    same documents (pairs) and options give the same rows, prompts and tokenizer."""
    pytest.importorskip("datasets")
    from dlmbench.tasks import hub
    from dlmbench.tasks.text import PairsTask, TextTask

    ctx = RunContext(cache=tmp_path / "cache", offline=True)
    docs = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(i % 17 + 1)) for i in range(150)]
    (tmp_path / "c.txt").write_text("\n".join(docs))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    local = TextTask(TextTask.Config(vocab_size=300, valid_documents=30), str(tmp_path / "c.txt"))
    owt = hub.OWTTask(hub.OWTConfig(data_files=str(tmp_path / "c.jsonl"), tokenizer="bpe", vocab_size=300,
                                    valid_documents=30, hf_cache_dir=str(tmp_path / "hf")))
    a, b = local.load(24, 0, 0, context=ctx), owt.load(24, 0, 0, context=ctx)
    assert a.fingerprint() == b.fingerprint() and a.info["valid_documents"] == b.info["valid_documents"] == 30

    pairs = [(d, d.upper()) for d in docs]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"document": s, "summary": t}) + "\n" for s, t in pairs))
    local_pairs = PairsTask(PairsTask.Config(vocab_size=300, valid_documents=30, target_len=12),
                            str(tmp_path / "p.jsonl"))
    xsum = hub.XSumTask(hub.XSumConfig(data_files=str(tmp_path / "x.jsonl"), tokenizer="bpe", vocab_size=300,
                                       valid_documents=30, target_len=12, hf_cache_dir=str(tmp_path / "hf")))
    c, d = local_pairs.load(32, 8, 3, context=ctx), xsum.load(32, 8, 3, context=ctx)
    assert c.fingerprint() == d.fingerprint() and c.sources == d.sources and c.references == d.references
    assert d.info["valid_carved_from_train"] and torch.equal(c.eval_prefixes, d.eval_prefixes)
