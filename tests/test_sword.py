"""The SWORD zText/zCom reader: a tiny module written in the real binary layout, and
the Debian KJV / Reina-Valera / MHCC modules when they are installed (CI installs them:
``apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc``)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from dlmbench.errors import ConfigError
from dlmbench.tasks import sword, versification

# Two testaments: "Gen" with chapters of 2 and 3 verses; "Matt" with one of 2 verses.
TINY = versification.Versification.parse("Gen 2 3", "Matt 2")

# slot texts per testament (None: empty slot); slots are header, testament, book intro,
# then per chapter an intro and its verses
OT = [
    None, '<milestone type="x-importer"/>', '<div osisID="Gen" sID="g1" type="book"/>',
    '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
    'In the <w lemma="strong:H7225">beginning</w> God created.<note placement="foot">a note</note> ¶',
    '<title type="x-s">A title</title>And the earth &amp; sea <transChange type="added">was</transChange> void .',
    '<chapter n="2" osisID="Gen.2" sID="Gen.2"/>',
    "Thus the heavens\n\n were finished.", None, "On the seventh day \\nd <w>God</w> rested.",
]
NT = [None, None, '<div osisID="Matt" sID="m1" type="book"/>', None,
      "The book of the generation.", "¿Abraham begat <w>Isaac</w> ?"]


def write_module(path: Path, testaments: list[list[str | None]], wide: bool = False,
                 links: dict[int, int] | None = None, per_block: int = 4) -> Path:
    """Write a zText module: blocks of ``per_block`` slots, zlib-compressed.

    ``links`` maps a slot to an earlier slot of the OT whose record it repeats (how a
    commentary links one entry to several verses). ``wide``: 12-byte verse records.
    """
    path.mkdir(parents=True, exist_ok=True)
    for t, slots in zip(("ot", "nt"), testaments):
        blocks: list[bytes] = []
        records: list[tuple[int, int, int]] = []
        for start in range(0, len(slots), per_block):
            data = b""
            for text in slots[start: start + per_block]:
                raw = (text or "").encode("utf-8")
                records.append((len(blocks), len(data), len(raw)))
                data += raw
            blocks.append(data)
        for slot, target in (links or {}).items() if t == "ot" else ():
            records[slot] = records[target]
        bzz, bzs = b"", b""
        for block in blocks:
            comp = zlib.compress(block)
            bzs += struct.pack("<III", len(bzz), len(comp), len(block))
            bzz += comp
        fmt = "<III" if wide else "<IIH"
        (path / f"{t}.bzs").write_bytes(bzs)
        (path / f"{t}.bzz").write_bytes(bzz)
        (path / f"{t}.bzv").write_bytes(b"".join(struct.pack(fmt, *r) for r in records))
    return path


def test_versification_slots_and_kjv_table():
    slots = TINY.slots(0)
    assert len(slots) == len(OT) and slots[:2] == [None, None]
    assert slots[2] == versification.VerseRef("Gen", 0, 0) and slots[4] == versification.VerseRef("Gen", 1, 1)
    assert [r.osis for r in TINY.verses()] == ["Gen.1.1", "Gen.1.2", "Gen.2.1", "Gen.2.2", "Gen.2.3",
                                               "Matt.1.1", "Matt.1.2"]
    books = [b for t in versification.KJV.testaments for b, _ in t]
    assert len(books) == 66 and books[0] == "Gen" and books[-1] == "Rev"
    assert len(versification.KJV.verses()) == 31_102
    lengths = versification.KJV.chapter_lengths()
    assert len(lengths) == 1189 and lengths[("Ps", 119)] == 176 and lengths[("John", 11)] == 57


@pytest.mark.parametrize("wide", [False, True])
def test_decoder_reads_the_binary_layout(tmp_path, wide):
    mod = sword.ZModule(write_module(tmp_path / "tiny", [OT, NT], wide=wide), TINY)
    raw = mod.raw_verses
    assert [r.osis for r, _ in raw][:2] == ["Gen.1.1", "Gen.1.2"]
    assert raw[3][1] == ""  # an empty verse slot
    texts = [t for _, t in mod.verses()]
    assert texts == [
        "In the beginning God created.",
        "And the earth & sea was void.",
        "Thus the heavens were finished.",
        "",
        "On the seventh day God rested.",
        "The book of the generation.",
        "¿Abraham begat Isaac?",
    ]


def test_clean_osis_rules():
    assert sword.clean_osis('<note n="a">x <i>y</i></note>Keep<title>T</title> <b>this</b> ¶ .') == "Keep this."
    assert sword.clean_osis('a <milestone type="x-p" marker="¶"/> b &lt;c&gt;') == "a b <c>"
    assert sword.clean_osis("( <w>is</w> it ) ;") == "(is it);"


def test_wrong_versification_and_missing_files(tmp_path):
    path = write_module(tmp_path / "tiny", [OT, NT])
    other = versification.Versification.parse("Gen 3 3", "Matt 2")
    with pytest.raises(ConfigError, match="versification"):
        sword.ZModule(path, other).raw_verses
    (path / "nt.bzz").unlink()
    with pytest.raises(ConfigError, match="nt.bzz is missing"):
        sword.ZModule(path, TINY)


def test_find_module_via_env_and_conf(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    write_module(root / "modules" / "texts" / "ztext" / "tinytext", [OT, NT])
    write_module(root / "data" / "elsewhere", [OT, NT])
    (root / "mods.d").mkdir(parents=True)
    (root / "mods.d" / "other.conf").write_text("[OtherMod]\nDataPath=./data/elsewhere/\nModDrv=zText\n")
    monkeypatch.setenv("DLMBENCH_SWORD_PATH", str(root))
    assert sword.find_module("TinyText") == root / "modules" / "texts" / "ztext" / "tinytext"
    assert sword.find_module("othermod") == (root / "data" / "elsewhere").resolve()
    with pytest.raises(ConfigError) as err:
        sword.find_module("NoSuchModule42")
    assert "apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc" in str(err.value)


def test_parallel_and_outline_pairs(tmp_path):
    bible = sword.ZModule(write_module(tmp_path / "en", [OT, NT]), TINY)
    es = [None, None, None, None, "En el principio.", "Y la tierra.", None, "Fueron acabados.",
          "Dato.", "Reposó."]
    spanish = sword.ZModule(write_module(tmp_path / "es", [es, [None] * 6]), TINY)
    pairs = sword.parallel_verses(bible, spanish)
    assert [(r.osis, b) for r, _, b in pairs] == [
        ("Gen.1.1", "En el principio."), ("Gen.1.2", "Y la tierra."), ("Gen.2.1", "Fueron acabados."),
        ("Gen.2.3", "Reposó.")]  # Gen.2.2 is empty in English; the NT is empty in Spanish
    table = ('<title type="x-s2">Chapter 1</title><table> <row><cell>The <hi>start</hi>.</cell>'
             '<cell>(1-2)</cell></row> <row><cell>Out of range.</cell><cell>(2-9)</cell></row></table>'
             '<hi type="bold">Verses 1-2</hi> Commentary.')
    paragraphs = ('Chapter Outline <div type="x-p"/> Heavens finished. <div type="x-p"/> (1) '
                  '<div type="x-p"/> The rest, day (seven). <div type="x-p"/> (2-3) '
                  '<hi type="bold">Verse 1</hi> Text (4).')
    comm = [None, None, None, None, table, None, None, paragraphs, None, None]
    # Gen.1.2 links to Gen.1.1's entry: it must be read once
    commentary = sword.ZModule(write_module(tmp_path / "comm", [comm, [None] * 6], links={5: 4}), TINY)
    out, stats = sword.outline_pairs(commentary, bible)
    assert [(p.osis, p.summary) for p in out] == [
        ("Gen.1.1-2", "The start."), ("Gen.2.1-1", "Heavens finished."),
        ("Gen.2.2-3", "The rest, day (seven).")]
    assert out[0].passage == "In the beginning God created. And the earth & sea was void."
    assert out[2].passage == "On the seventh day God rested."  # the empty Gen.2.2 is skipped
    assert stats["out_of_chapter"] == 1 and stats["pairs"] == 3


KJV_DIR = Path("/usr/share/sword/modules/texts/ztext/engKJV2006eb")
RV_DIR = Path("/usr/share/sword/modules/texts/ztext/spaRV1909eb")
MHCC_DIR = Path("/usr/share/sword/modules/comments/zcom/mhcc")
needs_kjv = pytest.mark.skipif(not KJV_DIR.is_dir(), reason=f"{KJV_DIR} absent: apt-get install sword-text-kjv")


@pytest.mark.usefixtures("sword_decoded_once")  # each module decoded once a session
@needs_kjv
def test_real_kjv():
    kjv = sword.ZModule(KJV_DIR)
    verses = kjv.verses()
    assert len(verses) == 31_102
    assert verses[0] == (versification.VerseRef("Gen", 1, 1), "In the beginning God created the heaven and the earth.")
    text = dict((r.osis, t) for r, t in verses)
    assert text["John.11.35"] == "Jesus wept."
    assert text["Rev.22.21"] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert all(t and "<" not in t and "¶" not in t and "\\" not in t for _, t in verses)
    assert sword.find_module("engkjv2006eb") == KJV_DIR.resolve()


@pytest.mark.usefixtures("sword_decoded_once")  # each module decoded once a session
@needs_kjv
@pytest.mark.skipif(not (RV_DIR.is_dir() and MHCC_DIR.is_dir()),
                    reason="apt-get install sword-text-sparv sword-comm-mhcc")
def test_real_pairs():
    kjv, rv, mhcc = sword.ZModule(KJV_DIR), sword.ZModule(RV_DIR), sword.ZModule(MHCC_DIR)
    pairs = sword.parallel_verses(kjv, rv)
    assert len(pairs) == 31_084
    assert pairs[0][2].startswith("EN el principio crió Dios los cielos y la tierra")
    outline, stats = sword.outline_pairs(mhcc, kjv)
    assert len(outline) == stats["pairs"] >= 2_600
    assert (outline[0].osis, outline[0].summary) == ("Gen.1.1-2", "God creates heaven and earth.")
