"""The results store: one JSON record per finished cell, written atomically.

Layout of a run directory::

    cells/<cell_id>.json        one CellRecord per (model, sampler+settings, steps, task, seed)
    samples/<cell_id>.jsonl     the samples of that cell (written before the record)
    models/<model>-<hash>.json  the ModelRecord of each checkpoint sampled from
    run.json                    the RunRecord: the resolved run config

A cell id is a hash of the cell's identity (:class:`~dlmbench.records.CellIdentity`), so a
re-run finds finished cells by name and skips them; a crash (even ``kill -9``) mid-write
leaves at most a stray temp file, never a torn or duplicated record. Every record is
validated against :mod:`dlmbench.records` when written and when read.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TypeVar

from pydantic import BaseModel, ValidationError

from dlmbench.atomic import remove_stale_temps, write_text_atomic
from dlmbench.names import inside
from dlmbench.records import SCHEMA_VERSION, CellIdentity, CellRecord, ModelRecord, RunRecord

R = TypeVar("R", bound=BaseModel)


class RecordWarning(UserWarning):
    """A stored record could not be read; it is left out (and its cell recomputed)."""


def _read(path: Path, kind: type[R]) -> R | None:
    try:
        return kind.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warnings.warn(f"{path}: not a valid {kind.__name__} ({first}); left out", RecordWarning, stacklevel=3)
        return None


@dataclass
class ResultStore:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def cell_path(self, cid: str) -> Path:
        return inside(self.root / "cells", f"{cid}.json")

    def samples_path(self, cid: str) -> Path:
        return inside(self.root / "samples", f"{cid}.jsonl")

    def is_done(self, cid: str) -> bool:
        """A cell is done when its record exists, validates and has status 'ok'."""
        record = self.read(cid)
        return record is not None and record.ok

    def read(self, cid: str) -> CellRecord | None:
        return _read(self.cell_path(cid), CellRecord)

    def write_samples(self, cid: str, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        write_text_atomic(self.samples_path(cid), text)

    def read_samples(self, cid: str) -> list[dict[str, Any]]:
        path = self.samples_path(cid)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_cell(self, record: CellRecord) -> None:
        write_text_atomic(self.cell_path(record.cell_id), record.to_json())

    def write_model(self, record: ModelRecord) -> None:
        write_text_atomic(self.model_path(record.model, record.checkpoint_hash), record.to_json())

    def model_path(self, model: str, checkpoint_hash: str) -> Path:
        return inside(self.root / "models", f"{model}-{checkpoint_hash}.json")

    def has_model(self, model: str, checkpoint_hash: str) -> bool:
        return self.model_path(model, checkpoint_hash).exists()

    def write_run(self, record: RunRecord) -> None:
        write_text_atomic(self.root / "run.json", record.to_json())

    def read_run(self) -> RunRecord | None:
        return _read(self.root / "run.json", RunRecord)

    def records(self) -> list[CellRecord]:
        return [r for p in sorted((self.root / "cells").glob("*.json")) if (r := _read(p, CellRecord))]

    def model_records(self) -> list[ModelRecord]:
        return [r for p in sorted((self.root / "models").glob("*.json")) if (r := _read(p, ModelRecord))]

    def remove_stale_temps(self) -> list[Path]:
        """The temp files that runs killed mid-write left in this store."""
        return [p for d in (self.root, self.root / "cells", self.root / "samples", self.root / "models")
                for p in remove_stale_temps(d)]

    def migrate(self) -> int:
        """Rename schema-1 cells to their schema-2 ids (metric names left out of the
        identity); returns how many moved. A crash midway is safe: a re-run finishes it."""
        moved = 0
        for path in sorted((self.root / "cells").glob("*.json")):
            record = _read(path, CellRecord)
            if record is None or record.schema_version >= SCHEMA_VERSION:
                continue
            model_hash = record.task_fingerprint if record.is_reference else record.checkpoint_hash
            if model_hash is None:  # a plugin that could not even build: its cells are retried
                path.rename(path.with_name(path.name + ".schema1"))
                continue
            identity = CellIdentity(run=record.run, model=record.model, model_hash=model_hash,
                                    sampler=record.sampler, sampler_settings=record.sampler_settings,
                                    steps=record.steps, task=record.task, seed=record.seed,
                                    budget_hash=record.budget_hash)
            new = record.model_copy(update={"cell_id": identity.cell_id, "schema_version": SCHEMA_VERSION})
            old_samples, new_samples = self.samples_path(record.cell_id), self.samples_path(new.cell_id)
            if old_samples.exists():
                write_text_atomic(new_samples, old_samples.read_text())
            self.write_cell(new)
            os.unlink(path)
            if old_samples.exists():
                os.unlink(old_samples)
            moved += 1
        return moved


def load_records(paths: Iterable[str | Path]) -> tuple[list[CellRecord], list[ModelRecord]]:
    """Cell and model records from run directories (or single cell JSON files)."""
    cells: list[CellRecord] = []
    models: list[ModelRecord] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            if (record := _read(p, CellRecord)) is not None:
                cells.append(record)
            continue
        roots = [p] if (p / "cells").is_dir() else sorted(q.parent for q in p.glob("*/cells"))
        for root in roots:
            store = ResultStore(root)
            cells.extend(store.records())
            models.extend(store.model_records())
    return cells, models
