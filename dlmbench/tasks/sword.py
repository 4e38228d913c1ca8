"""A reader for installed SWORD zText/zCom modules (Bibles and commentaries).

The format (a ``zText``/``zCom`` module stores each testament in three files):

* ``ot.bzs``/``nt.bzs``: the block index, one 12-byte little-endian record per block,
  ``(offset, compressed size, uncompressed size)`` as ``<III``, pointing into
* ``ot.bzz``/``nt.bzz``: the zlib-compressed blocks, one after another;
* ``ot.bzv``/``nt.bzv``: the verse index, one record per *slot* of the versification,
  ``(block, offset in the uncompressed block, size)``: ``<IIH`` (10 bytes) for
  ``zText``/``zCom``, ``<III`` (12 bytes) for the ``*4`` drivers; the width is read off
  the file size (Debian's MHCC says ``zCom4`` in its conf but has 10-byte records).
  Commentaries link one entry to several verses by repeating the same record.

Slots follow the versification in order: per testament a module header and a
testament header, then for each book a book-introduction slot, and for each chapter
a chapter-introduction slot followed by one slot per verse. Modules with the same
versification therefore share slot numbers: slot ``i`` of the KJV and slot ``i`` of the
Reina-Valera 1909 are the same verse. :data:`KJV` holds that versification (31,102
verses in 1,189 chapters).

The text is OSIS markup; :func:`clean_osis` turns it into plain text (notes and titles
dropped, tags stripped, entities decoded, the pilcrow removed, whitespace collapsed).

Modules are looked up under ``$DLMBENCH_SWORD_PATH`` (a ``os.pathsep``-separated list
of SWORD library roots, each holding ``mods.d/`` and/or ``modules/``), then
``$SWORD_PATH``, ``~/.sword`` and ``/usr/share/sword``. The Debian packages install
the three modules dlmbench uses::

    apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc
"""

from __future__ import annotations

import html
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dlmbench.errors import ConfigError

APT_PACKAGES = ("sword-text-kjv", "sword-text-sparv", "sword-comm-mhcc")
APT_FIX = "apt-get install " + " ".join(APT_PACKAGES)
DEFAULT_ROOTS = ("~/.sword", "/usr/share/sword")
MODULE_DIRS = ("modules/texts/ztext", "modules/comments/zcom")
TESTAMENTS = ("ot", "nt")

# The modules dlmbench's built-in tasks read (their SWORD names).
KJV_MODULE = "engKJV2006eb"
RV1909_MODULE = "spaRV1909eb"
MHCC_MODULE = "MHCC"


# --- versification ----------------------------------------------------------------------
@dataclass(frozen=True)
class VerseRef:
    """A verse (``verse >= 1``), a chapter introduction (``verse == 0``) or a book
    introduction (``chapter == 0``)."""

    book: str
    chapter: int
    verse: int

    @property
    def osis(self) -> str:
        return f"{self.book}.{self.chapter}.{self.verse}"


@dataclass(frozen=True)
class Versification:
    """Books in order per testament, each with its verses per chapter."""

    testaments: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...]  # (ot, nt)

    @classmethod
    def parse(cls, *tables: str) -> "Versification":
        """One table per testament: a book name followed by its verse counts, repeated."""
        out = []
        for table in tables:
            books: list[tuple[str, list[int]]] = []
            for tok in table.split():
                if tok.isdigit():
                    books[-1][1].append(int(tok))
                else:
                    books.append((tok, []))
            out.append(tuple((name, tuple(counts)) for name, counts in books))
        return cls(tuple(out))

    def slots(self, testament: int) -> list[VerseRef | None]:
        """What each index record of a testament holds (None: module/testament header)."""
        out: list[VerseRef | None] = [None, None]
        for book, counts in self.testaments[testament]:
            out.append(VerseRef(book, 0, 0))
            for chapter, n in enumerate(counts, start=1):
                out.extend(VerseRef(book, chapter, v) for v in range(n + 1))
        return out

    def verses(self) -> list[VerseRef]:
        return [r for t in range(len(self.testaments)) for r in self.slots(t) if r and r.verse]

    def chapter_lengths(self) -> dict[tuple[str, int], int]:
        return {(b, c): n for books in self.testaments for b, counts in books
                for c, n in enumerate(counts, start=1)}


# The KJV versification (SWORD's "KJV" system), derived from the chapter and book
# markers of the engKJV2006eb module: 23,145 + 7,957 = 31,102 verses.
_KJV_OT = """
Gen 31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 22 35
43 55 32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26 Exod 22 25 22 31 23 30 25 32
35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 43 46 38 18 35 23 35 35 38 29 31 43
38 Lev 17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34 Num
54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 31 40 16 54
42 56 29 34 13 Deut 46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22
19 19 26 68 29 20 30 52 29 12 Josh 18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51
9 45 34 16 33 Judg 36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25 Ruth 22 23
18 22 1Sam 28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12
25 11 31 13 2Sam 27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25
1Kgs 53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53 2Kgs 18 25 27 44 27
33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30 1Chr 54 55 24 43 26 81 40 40 44
14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30 2Chr 17 18 17 22 14 42 22 18 31
19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 27 36 27 21 33 25 33 27 23 Ezra 11 70
13 24 17 22 28 36 15 44 Neh 11 20 32 23 19 19 73 18 38 39 36 47 31 Esth 22 23 15 17 14 14 10
17 32 3 Job 22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23
28 25 31 40 22 33 37 16 33 24 41 30 24 34 17 Ps 6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50
14 9 13 31 6 10 22 12 14 9 11 12 24 11 22 22 28 12 40 22 13 17 13 11 5 26 17 11 9 14 20 23
19 9 6 7 23 13 11 11 17 12 8 12 11 10 13 20 7 35 36 5 24 20 28 23 10 12 20 72 13 19 16 8 18
12 13 17 7 18 52 17 16 15 5 23 11 13 12 9 9 5 8 28 22 35 45 48 43 13 31 7 10 10 9 8 18 19 2
29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9 8 24 13 10 7 12 15 21 10 20 14 9 6 Prov 33 22
35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 28 27 33 31 Eccl
18 26 22 16 20 12 29 17 18 20 10 14 Song 17 17 11 16 16 13 13 14 Isa 31 22 26 6 30 13 25 22
21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 24 33 9 20 24 17 10 22 38 22 8 31 29
25 28 28 25 13 15 22 26 11 23 15 12 17 13 12 21 14 21 22 11 12 19 12 25 24 Jer 19 37 25 31
31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 17 32 24 40 44 26 22 19
32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34 Lam 22 22 66 22 22 Ezek 28 10 27 17 17 14
27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 26 21 26 18 32 33 31 15 38 28
23 29 49 26 20 27 31 25 24 23 35 Dan 21 49 30 37 31 28 28 27 27 21 45 13 Hos 11 23 5 19 15
11 16 14 17 15 12 14 16 9 Joel 20 32 21 Amos 15 16 15 13 27 14 17 14 15 Obad 21 Jonah 17 10
10 11 Mic 16 13 12 13 15 16 20 Nah 15 13 19 Hab 17 20 19 Zeph 18 15 20 Hag 15 23 Zech 21 13
10 14 11 15 14 23 17 12 17 14 9 21 Mal 14 17 18 6
"""
_KJV_NT = """
Matt 25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20
Mark 45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20 Luke 80 52 38 44 39 49 50 56 62 42 54
59 35 35 32 31 37 43 48 47 38 71 56 53 John 51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33
26 40 42 31 25 Acts 26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27
27 32 44 31 Rom 32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27 1Cor 31 16 23 21 13 20 40 13
27 33 34 31 13 40 58 24 2Cor 24 17 18 18 21 18 16 24 15 18 33 21 14 Gal 24 21 29 31 26 18
Eph 23 22 21 32 33 24 Phil 30 30 21 23 Col 29 23 25 18 1Thess 10 20 13 18 28 2Thess 12 17 18
1Tim 20 15 16 16 25 21 2Tim 18 26 17 22 Titus 16 15 15 Phlm 25 Heb 14 18 19 16 14 20 28 13
28 39 40 29 25 Jas 27 26 18 17 20 1Pet 25 25 22 19 14 2Pet 21 22 18 1John 10 29 24 21 21
2John 13 3John 14 Jude 25 Rev 20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27
21
"""
KJV = Versification.parse(_KJV_OT, _KJV_NT)


# --- markup -------------------------------------------------------------------------------
_NOTE = re.compile(r"<note\b[^>]*?(?<!/)>.*?</note>", re.S)
_TITLE = re.compile(r"<title\b[^>]*?(?<!/)>.*?</title>", re.S)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_USFM = re.compile(r"\\[a-z]+[0-9]*\*?(?![^\s<])")  # stray USFM markers, e.g. "\\nd"
_SPACE_CLOSE = re.compile(r" (?=[,.;:!?)\]’])")
_OPEN_SPACE = re.compile(r"([(\[¿¡]) ")


def clean_osis(markup: str) -> str:
    """Plain text of OSIS markup: drop notes and titles, strip tags, decode entities,
    remove the pilcrow and stray USFM markers (``\\nd``), collapse whitespace."""
    text = _TITLE.sub(" ", _NOTE.sub(" ", markup))
    text = html.unescape(_TAG.sub(" ", text)).replace("\u00b6", " ")
    text = _USFM.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    # a tag between a word and its punctuation leaves a space: "earth ." -> "earth."
    return _OPEN_SPACE.sub(r"\1", _SPACE_CLOSE.sub("", text))


# --- locating modules ---------------------------------------------------------------------
def sword_roots() -> list[Path]:
    """SWORD library roots in search order (only those that exist)."""
    raw: list[str] = []
    for var in ("DLMBENCH_SWORD_PATH", "SWORD_PATH"):
        raw += [p for p in os.environ.get(var, "").split(os.pathsep) if p]
    raw += list(DEFAULT_ROOTS)
    seen, out = set(), []
    for p in raw:
        path = Path(p).expanduser()
        if path not in seen and path.is_dir():
            seen.add(path)
            out.append(path)
    return out


def _conf_datapath(root: Path, name: str) -> Path | None:
    mods = root / "mods.d"
    if not mods.is_dir():
        return None
    for conf in sorted(mods.glob("*.conf")):
        try:
            text = conf.read_text("utf-8", errors="replace")
        except OSError:
            continue
        head = re.search(r"^\s*\[([^\]]+)\]", text, re.M)
        if not head or head.group(1).strip().lower() != name.lower():
            continue
        data = re.search(r"^\s*DataPath\s*=\s*(.+?)\s*$", text, re.M)
        if data:
            path = (root / data.group(1).strip().lstrip("./")).resolve()
            if path.is_dir():
                return path
    return None


def find_module(name: str) -> Path:
    """The data directory of module ``name`` (case-insensitive), or a ConfigError."""
    roots = sword_roots()
    for root in roots:
        found = _conf_datapath(root, name)
        if found is not None:
            return found
        for sub in MODULE_DIRS:
            parent = root / sub
            if parent.is_dir():
                for d in parent.iterdir():
                    if d.name.lower() == name.lower() and d.is_dir():
                        return d
    where = ", ".join(str(r) for r in roots) or "none of " + ", ".join(DEFAULT_ROOTS)
    raise ConfigError(
        f"SWORD module {name!r} is not installed (searched: {where}); install the Debian "
        f"modules with `{APT_FIX}` (as root), or point DLMBENCH_SWORD_PATH at a SWORD "
        f"library that has it"
    )


# --- reading ------------------------------------------------------------------------------
class ZModule:
    """One zText/zCom module: raw OSIS per index slot, decoded lazily per testament."""

    def __init__(self, path: str | Path, versification: Versification = KJV):
        self.path = Path(path)
        self.versification = versification
        for t in TESTAMENTS[: len(versification.testaments)]:
            for ext in ("bzs", "bzv", "bzz"):
                if not (self.path / f"{t}.{ext}").is_file():
                    raise ConfigError(
                        f"{self.path} is not a zText/zCom module: {t}.{ext} is missing; "
                        f"reinstall it (`{APT_FIX}`)"
                    )

    @classmethod
    def open(cls, name: str, versification: Versification = KJV) -> "ZModule":
        return cls(find_module(name), versification)

    def source_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.suffix in (".bzs", ".bzv", ".bzz"))

    def records(self, testament: int) -> list[tuple[int, int, int]]:
        """``(block, offset, size)`` per slot of one testament (0: OT, 1: NT)."""
        t = TESTAMENTS[testament]
        raw = (self.path / f"{t}.bzv").read_bytes()
        n = len(self.versification.slots(testament))
        if len(raw) == 10 * n:
            fmt = "<IIH"
        elif len(raw) == 12 * n:
            fmt = "<III"
        else:
            raise ConfigError(
                f"{self.path / (t + '.bzv')}: {len(raw)} bytes do not hold the {n} slots of "
                f"this versification (10- or 12-byte records); the module uses another "
                f"versification"
            )
        return list(struct.iter_unpack(fmt, raw))

    def blocks(self, testament: int) -> list[bytes]:
        t = TESTAMENTS[testament]
        index = (self.path / f"{t}.bzs").read_bytes()
        data = (self.path / f"{t}.bzz").read_bytes()
        if len(index) % 12:
            raise ConfigError(f"{self.path / (t + '.bzs')}: size {len(index)} is not a multiple of 12")
        out = []
        for offset, csize, usize in struct.iter_unpack("<III", index):
            if csize == 0:
                out.append(b"")
                continue
            block = zlib.decompress(data[offset: offset + csize])
            if usize and len(block) != usize:
                raise ConfigError(f"{self.path}: block at {offset} inflates to {len(block)} bytes, index says {usize}")
            out.append(block)
        return out

    def slots(self, testament: int) -> Iterator[tuple[VerseRef | None, tuple[int, int, int], str]]:
        """``(reference, record, raw OSIS)`` for every slot of one testament, in order."""
        refs = self.versification.slots(testament)
        blocks = self.blocks(testament)
        for ref, rec in zip(refs, self.records(testament)):
            b, off, size = rec
            raw = blocks[b][off: off + size].decode("utf-8", "replace") if size else ""
            yield ref, rec, raw

    def entries(self) -> Iterator[tuple[VerseRef | None, tuple[int, int, int, int], str]]:
        """Every slot of the module; the record is prefixed by the testament."""
        for t in range(len(self.versification.testaments)):
            for ref, rec, raw in self.slots(t):
                yield ref, (t, *rec), raw

    @cached_property
    def raw_verses(self) -> list[tuple[VerseRef, str]]:
        """``(reference, raw OSIS)`` for every verse slot (31,102 for the KJV)."""
        return [(ref, raw) for ref, _, raw in self.entries() if ref is not None and ref.verse]

    def verses(self) -> list[tuple[VerseRef, str]]:
        """``(reference, plain text)`` per verse slot; empty slots give ``""``."""
        return [(ref, clean_osis(raw) if raw else "") for ref, raw in self.raw_verses]


def read_ztext(name_or_path: str | Path, versification: Versification = KJV) -> list[tuple[VerseRef, str]]:
    """Plain verse texts of a module given by SWORD name or by data directory."""
    path = Path(name_or_path)
    module = ZModule(path, versification) if path.is_dir() else ZModule.open(str(name_or_path), versification)
    return module.verses()


# --- derived corpora ----------------------------------------------------------------------
def parallel_verses(source: ZModule, target: ZModule) -> list[tuple[VerseRef, str, str]]:
    """Verse-aligned pairs of two modules with the same versification (both non-empty)."""
    if source.versification != target.versification:
        raise ConfigError(f"{source.path} and {target.path} use different versifications")
    out = []
    for (ref, a), (_, b) in zip(source.verses(), target.verses()):
        if a and b:
            out.append((ref, a, b))
    return out


_ROW = re.compile(r"<row>\s*<cell>(.*?)</cell>\s*<cell>(.*?)</cell>\s*</row>", re.S)
_RANGE = re.compile(r"^\(?\s*(\d+)\s*(?:[-\u2013]\s*(\d+))?\s*\)?\.?$")
_PARA_ROW = re.compile(r"\s*(.+?)\s*\((\d+(?:\s*[-\u2013]\s*\d+)?)\)")


def outline_rows(raw: str) -> list[tuple[str, str]]:
    """``(summary, verse range)`` rows of a chapter outline in a commentary entry.

    Most MHCC chapters give the outline as a table, ``<row><cell>SUMMARY</cell>
    <cell>(a-b)</cell></row>``; a few as paragraphs after "Chapter Outline", each
    summary followed by its ``(a-b)``, up to the first verse heading.
    """
    rows = [(clean_osis(c), clean_osis(r)) for c, r in _ROW.findall(raw)]
    if rows or "Chapter Outline" not in raw:
        return rows
    region = raw[raw.index("Chapter Outline") + len("Chapter Outline"):]
    end = region.find('<hi type="bold">')
    region = clean_osis(region if end < 0 else region[:end])
    return [(m.group(1), m.group(2)) for m in _PARA_ROW.finditer(region)]


@dataclass(frozen=True)
class OutlinePair:
    """A commentary outline line and the Bible passage it summarises."""

    book: str
    chapter: int
    first: int
    last: int
    passage: str
    summary: str

    @property
    def osis(self) -> str:
        return f"{self.book}.{self.chapter}.{self.first}-{self.last}"


def outline_pairs(commentary: ZModule, bible: ZModule) -> tuple[list[OutlinePair], dict[str, int]]:
    """(passage, outline line) pairs of a commentary with chapter outlines (the MHCC).

    Each chapter's commentary opens with an outline (:func:`outline_rows`); the passage of
    a row ``(a-b)`` is verses a..b of that chapter in ``bible``. A linked entry is read once, at its first slot, and
    belongs to that slot's chapter. Rows whose range does not parse or falls outside the
    chapter are skipped and counted in the returned statistics.
    """
    if commentary.versification != bible.versification:
        raise ConfigError(f"{commentary.path} and {bible.path} use different versifications")
    text = {(r.book, r.chapter, r.verse): t for r, t in bible.verses()}
    lengths = bible.versification.chapter_lengths()
    seen: set[tuple[int, int, int, int]] = set()
    pairs: list[OutlinePair] = []
    stats = {"rows": 0, "bad_range": 0, "out_of_chapter": 0, "empty": 0}
    for ref, rec, raw in commentary.entries():
        if ref is None or ref.chapter == 0 or not raw or rec in seen:
            continue
        seen.add(rec)
        for summary, rng in outline_rows(raw):
            stats["rows"] += 1
            m = _RANGE.match(rng)
            if not m:
                stats["bad_range"] += 1
                continue
            first = int(m.group(1))
            last = int(m.group(2) or first)
            n = lengths[(ref.book, ref.chapter)]
            if not 1 <= first <= last <= n:
                stats["out_of_chapter"] += 1
                continue
            passage = " ".join(t for v in range(first, last + 1)
                               if (t := text.get((ref.book, ref.chapter, v))))
            if not summary or not passage:
                stats["empty"] += 1
                continue
            pairs.append(OutlinePair(ref.book, ref.chapter, first, last, passage, summary))
    stats["pairs"] = len(pairs)
    return pairs, stats
