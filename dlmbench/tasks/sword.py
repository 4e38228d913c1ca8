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

Slots follow the versification in order (:mod:`dlmbench.tasks.versification`), so slot
``i`` of the KJV and slot ``i`` of the Reina-Valera 1909 are the same verse.

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
from dlmbench.tasks.versification import KJV, VerseRef, Versification

APT_PACKAGES = ("sword-text-kjv", "sword-text-sparv", "sword-comm-mhcc")
APT_FIX = "apt-get install " + " ".join(APT_PACKAGES)
DEFAULT_ROOTS = ("~/.sword", "/usr/share/sword")
MODULE_DIRS = ("modules/texts/ztext", "modules/comments/zcom")
TESTAMENTS = ("ot", "nt")

# The modules dlmbench's built-in tasks read (their SWORD names).
KJV_MODULE = "engKJV2006eb"
RV1909_MODULE = "spaRV1909eb"
MHCC_MODULE = "MHCC"


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
def search_path_setting() -> list[str]:
    """The library roots the user named in ``$DLMBENCH_SWORD_PATH``, then ``$SWORD_PATH``.

    Like ``PATH``, these are the SWORD library's own user setting (where modules are
    installed), not run state, so they are read here, where modules are searched for.
    """
    return [p for var in ("DLMBENCH_SWORD_PATH", "SWORD_PATH")
            for p in os.environ.get(var, "").split(os.pathsep) if p]


def sword_roots() -> list[Path]:
    """SWORD library roots in search order (only those that exist)."""
    raw = search_path_setting() + list(DEFAULT_ROOTS)
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
