"""Where a real-text task's text comes from: the source protocol, local files, SWORD modules.

A source gives text, never ids: documents (``str``) for an unconditional task,
``(source, target)`` pairs for a conditional one, per named split, each split counted
and streamed. Tokenizing is the task's separate step (:mod:`dlmbench.tasks.tokenizers`),
so the same source can be read through different tokenizers. A source also says what
its data are made of (:meth:`Source.stamp`, part of the cache key) and what to record
about it (:meth:`Source.describe`, merged into the task's ``info``).

Local files and SWORD modules have one split, ``train``; Hugging Face datasets
(:mod:`dlmbench.tasks.hub`) have theirs. How splits become training, validation and
evaluation data is the tasks' business (:mod:`dlmbench.tasks.corpus`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Generic, Literal, Protocol, TypeVar

from dlmbench.context import RunContext
from dlmbench.errors import ConfigError
from dlmbench.tasks import sword
from dlmbench.tasks.cache import file_stamps

Document = str
Pair = tuple[str, str]
TRAIN = "train"  # the one split of a local file or a SWORD module

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Split(Protocol[T_co]):
    """One split: its items in order, counted, streamed, and windowed without reading
    what lies before the window."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T_co]: ...

    def window(self, start: int, stop: int) -> "Split[T_co]": ...


class Source(Protocol[T_co]):
    """Text for a task: documents or pairs, per named split."""

    def open(self, context: RunContext) -> Mapping[str, Split[T_co]]:
        """The splits; reading may need the context (a hub dataset, offline or not)."""
        ...

    def stamp(self) -> Any:
        """JSON-able identity of the data, for the cache key (files: paths, sizes, mtimes)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a task's ``info`` records about the source."""
        ...


class ListSplit(Generic[T]):
    """A split held in memory (local files and SWORD modules are small)."""

    def __init__(self, items: Sequence[T]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def window(self, start: int, stop: int) -> "ListSplit[T]":
        return self if (start, stop) == (0, len(self.items)) else ListSplit(self.items[start:stop])


# --- local files ---------------------------------------------------------------------------
def _open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def file_kind(path: Path) -> str:
    """The suffix that says the format, ignoring ``.gz``."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1] if suffixes else ""


def need_path(task: str, argument: str | None, what: str) -> Path:
    if not argument:
        raise ConfigError(f"task {task!r} needs a file: --task {task}:PATH ({what})")
    path = Path(argument).expanduser()
    if not path.is_file():
        raise ConfigError(f"task {task!r}: {str(path)!r} is not a file; check the path in --task {task}:PATH")
    return path


def read_jsonl(path: Path, fields: Sequence[str]) -> Iterator[tuple[str, ...]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}); one object per line") from None
            missing = [k for k in fields if not isinstance(obj, dict) or k not in obj]
            if missing:
                raise ConfigError(f"{path}:{lineno}: no field {missing[0]!r}; set the task's *_field option "
                                  f"or fix the file")
            yield tuple(str(obj[k]) if obj[k] is not None else "" for k in fields)


def read_documents(path: Path, text_field: str = "text") -> list[str]:
    """Documents of a ``.txt`` (one per non-empty line) or ``.jsonl`` (field) file."""
    kind = file_kind(path)
    if kind == ".txt":
        with _open_text(path) as f:
            return [line.strip() for line in f if line.strip()]
    if kind in (".jsonl", ".json"):
        return [t.strip() for (t,) in read_jsonl(path, [text_field]) if t.strip()]
    raise ConfigError(f"{path}: use a .txt (one document per line) or .jsonl (field {text_field!r}) file")


class TextFile:
    """``--task text:PATH``: a ``.txt`` (one document per line) or ``.jsonl`` corpus."""

    def __init__(self, task: str, argument: str | None, text_field: str):
        self.task, self.argument, self.text_field = task, argument, text_field
        self.path = need_path(task, argument, "a .txt with one document per line, or a .jsonl with a 'text' field")

    def stamp(self) -> Any:
        return {"files": file_stamps([self.path])}

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def open(self, context: RunContext) -> Mapping[str, Split[Document]]:
        docs = read_documents(self.path, self.text_field)
        if not docs:
            raise ConfigError(f"task {self.task!r}: {self.argument} holds no documents")
        return {TRAIN: ListSplit(docs)}


class PairsFile:
    """``--task pairs:PATH``: a ``.jsonl`` with a source and a target field; pairs with an
    empty side are skipped, both sides are stripped."""

    def __init__(self, task: str, argument: str | None, source_field: str, target_field: str):
        self.task, self.fields = task, (source_field, target_field)
        self.path = need_path(task, argument, "a .jsonl with 'source' and 'target' fields")

    def stamp(self) -> Any:
        return {"files": file_stamps([self.path])}

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def open(self, context: RunContext) -> Mapping[str, Split[Pair]]:
        if file_kind(self.path) not in (".jsonl", ".json"):
            raise ConfigError(f"task {self.task!r}: {self.path} must be a .jsonl file with "
                              f"{self.fields[0]!r}/{self.fields[1]!r} fields")
        stripped = [(s.strip(), t.strip()) for s, t in read_jsonl(self.path, self.fields)]
        pairs = [(s, t) for s, t in stripped if s and t]
        if not pairs:
            raise ConfigError(f"task {self.task!r}: {self.path} holds no non-empty pairs")
        return {TRAIN: ListSplit(pairs)}


# --- SWORD modules (sword.py reads them) -----------------------------------------------------
class _Modules:
    """Installed SWORD modules, opened once; their files are the stamp."""

    def __init__(self, *names: str):
        self.names = names

    @cached_property
    def modules(self) -> list[sword.ZModule]:
        return [sword.ZModule.open(n) for n in self.names]

    def stamp(self) -> Any:
        return {"files": file_stamps(p for m in self.modules for p in m.source_files())}


class BibleText(_Modules):
    """A Bible module's verses, one document per verse (or per chapter); empty verses skipped."""

    def __init__(self, module: str, unit: Literal["verse", "chapter"]):
        super().__init__(module)
        self.unit = unit

    def describe(self) -> dict[str, Any]:
        return {"module": self.names[0], "unit": self.unit}

    def open(self, context: RunContext) -> Mapping[str, Split[Document]]:
        verses = [(ref, t) for ref, t in self.modules[0].verses() if t]
        if self.unit == "verse":
            return {TRAIN: ListSplit([t for _, t in verses])}
        chapters: dict[tuple[str, int], list[str]] = {}
        for ref, t in verses:
            chapters.setdefault((ref.book, ref.chapter), []).append(t)
        return {TRAIN: ListSplit([" ".join(v) for v in chapters.values()])}


class ParallelBibles(_Modules):
    """Verse-aligned pairs of two Bibles with the same versification (both sides non-empty)."""

    def describe(self) -> dict[str, Any]:
        return {"source_module": self.names[0], "target_module": self.names[1]}

    def open(self, context: RunContext) -> Mapping[str, Split[Pair]]:
        source, target = self.modules
        return {TRAIN: ListSplit([(a, b) for _, a, b in sword.parallel_verses(source, target)])}


class CommentaryOutlines(_Modules):
    """(Bible passage, commentary outline line) pairs (:func:`sword.outline_pairs`)."""

    def __init__(self, bible_module: str, commentary_module: str):
        super().__init__(bible_module, commentary_module)

    @cached_property
    def _outlines(self) -> tuple[list[Pair], dict[str, int]]:
        bible, commentary = self.modules
        pairs, stats = sword.outline_pairs(commentary, bible)
        return [(p.passage, p.summary) for p in pairs], stats

    def describe(self) -> dict[str, Any]:
        return {"bible_module": self.names[0], "commentary_module": self.names[1],
                "outline_rows": self._outlines[1]}

    def open(self, context: RunContext) -> Mapping[str, Split[Pair]]:
        return {TRAIN: ListSplit(self._outlines[0])}
