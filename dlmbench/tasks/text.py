"""The built-in real-text tasks over local data: corpora in files and the SWORD Bibles.

Task ids (``--task``)
  ``text:PATH``      unconditional; PATH is a ``.txt`` (one document per line) or a
                     ``.jsonl`` (one object per line, field ``text``); ``.gz`` is fine.
  ``pairs:PATH``     conditional; a ``.jsonl`` with ``source``/``target`` fields.
  ``kjv``            unconditional; the King James Version, one document per verse.
  ``kjv-es``         conditional; KJV verse -> the same verse in the Reina-Valera 1909.
  ``kjv-summarize``  conditional; KJV passage -> its Matthew Henry outline line.

The ``kjv*`` tasks read the Debian SWORD modules (:mod:`dlmbench.tasks.sword`):
``apt-get install sword-text-kjv sword-text-sparv sword-comm-mhcc``.

Each task is a source (:mod:`dlmbench.tasks.sources`) under the corpus or
parallel-corpus task (:mod:`dlmbench.tasks.corpus`, which describes the splits, the
layouts and the cache). These sources have one split, so the validation split is
always the last ``valid_documents`` documents (pairs) and a conditional task's
evaluation prompts come from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

import dlmbench
from dlmbench.task import Task
from dlmbench.tasks import sword
from dlmbench.tasks.corpus import CorpusConfig, CorpusTask, ParallelCorpusConfig, ParallelCorpusTask
from dlmbench.tasks.sources import (
    BibleText, CommentaryOutlines, Document, Pair, PairsFile, ParallelBibles, Source, TextFile,
)


class TextConfig(CorpusConfig):
    text_field: str = Field("text", description="the field of a .jsonl corpus")


class PairsConfig(ParallelCorpusConfig):
    source_field: str = "source"
    target_field: str = "target"


class KJVConfig(CorpusConfig):
    module: str = Field(sword.KJV_MODULE, description="SWORD module name")
    unit: Literal["verse", "chapter"] = Field("verse", description="one document per verse or per chapter")


class KJVTranslateConfig(ParallelCorpusConfig):
    source_module: str = sword.KJV_MODULE
    target_module: str = sword.RV1909_MODULE


class KJVSummarizeConfig(ParallelCorpusConfig):
    target_len: int | None = Field(32, ge=2, description="summary positions; prefix_len = seq_len - target_len")
    bible_module: str = sword.KJV_MODULE
    commentary_module: str = sword.MHCC_MODULE


class TextTask(CorpusTask[TextConfig]):
    """Any local corpus: ``--task text:PATH`` (.txt one document per line, or .jsonl)."""

    name = "text"
    Config = TextConfig

    def source(self) -> Source[Document]:
        return TextFile(self.name, self.argument, self.config.text_field)


class PairsTask(ParallelCorpusTask[PairsConfig]):
    """Any local parallel corpus: ``--task pairs:PATH`` (.jsonl with source/target)."""

    name = "pairs"
    Config = PairsConfig

    def source(self) -> Source[Pair]:
        return PairsFile(self.name, self.argument, self.config.source_field, self.config.target_field)


class KJVTask(CorpusTask[KJVConfig]):
    """The King James Version (SWORD engKJV2006eb), one document per verse (or chapter)."""

    name = "kjv"
    Config = KJVConfig

    def source(self) -> Source[Document]:
        return BibleText(self.config.module, self.config.unit)


class KJVTranslateTask(ParallelCorpusTask[KJVTranslateConfig]):
    """English (KJV) verse -> Spanish (Reina-Valera 1909) verse; same versification."""

    name = "kjv-es"
    Config = KJVTranslateConfig

    def source(self) -> Source[Pair]:
        return ParallelBibles(self.config.source_module, self.config.target_module)


class KJVSummarizeTask(ParallelCorpusTask[KJVSummarizeConfig]):
    """KJV passage -> the Matthew Henry Concise Commentary's outline line for it."""

    name = "kjv-summarize"
    Config = KJVSummarizeConfig
    valid_cap = 250

    def source(self) -> Source[Pair]:
        return CommentaryOutlines(self.config.bible_module, self.config.commentary_module)


@dlmbench.hookimpl
def register_tasks(register: Callable[[type[Task[Any]]], None]) -> None:
    for cls in (TextTask, PairsTask, KJVTask, KJVTranslateTask, KJVSummarizeTask):
        register(cls)
