"""The results store: one JSON record per finished cell, written atomically.

Layout of a run directory::

    cells/<cell_id>.json        one record per (model, sampler+settings, steps, task, seed)
    samples/<cell_id>.jsonl     the samples of that cell (written before the record)
    models/<model>-<hash>.json  training report and likelihood bound of each model
    run.json                    the resolved run config

A cell id is a hash of the cell's identity, so a re-run finds finished cells by name and
skips them; a crash (even ``kill -9``) mid-write leaves at most a stray temp file, never
a torn or duplicated record. Records follow :data:`RECORD_FIELDS` (documented in the
README, in the spirit of lm-eval-harness's result schema).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from dlmbench.atomic import write_text_atomic
from dlmbench.config import stable_hash

SCHEMA_VERSION = 1

RECORD_FIELDS = {
    "schema": "record schema version",
    "cell_id": "hash of the cell identity",
    "status": "'ok' or 'error'",
    "error": "the exception text when status is 'error'",
    "run": "run name",
    "model": "model name",
    "label": "row name in tables",
    "model_config": "the model's resolved options",
    "checkpoint_hash": "hash stamped into the checkpoint the samples came from",
    "sampler": "sampler name",
    "sampler_settings": "the sampler's resolved settings",
    "steps": "sampling step budget",
    "nfe": "measured function evaluations per sample (core-counted)",
    "max_nfe": "the sampler's declared bound for these steps",
    "task": "task name (with argument)",
    "task_fingerprint": "hash of the tokenized data",
    "seed": "sampling seed",
    "num_samples": "samples scored",
    "metrics": "{name: {value, stderr, higher_is_better, details}}",
    "budget": "the run's shared budget",
    "budget_hash": "hash of the budget (tables group by it)",
    "train_tokens": "tokens the model was trained on (batch x seq_len x steps)",
    "wall_time_s": "sampling wall time of the cell",
    "score_time_s": "scoring wall time of the cell",
    "device": "device the cell ran on",
    "precision": "'fp32' or 'bf16' (autocast in training and sampling)",
    "compile": "whether the network's blocks ran under torch.compile",
    "versions": "python, torch, dlmbench and plugin versions",
    "git_revision": "git revision of the working tree, if any",
    "created": "UTC timestamp",
}


def cell_identity(
    run: str, model: str, model_hash: str, sampler: str, sampler_settings: dict, steps: int,
    task: str, seed: int, budget_hash: str, metrics: Iterable[str],
) -> dict[str, Any]:
    return {
        "run": run,
        "model": model,
        "model_hash": model_hash,
        "sampler": sampler,
        "sampler_settings": sampler_settings,
        "steps": steps,
        "task": task,
        "seed": seed,
        "budget_hash": budget_hash,
        "metrics": sorted(metrics),
    }


def cell_id(identity: dict[str, Any]) -> str:
    readable = f"{identity['model']}-{identity['sampler']}-steps{identity['steps']}-seed{identity['seed']}"
    return f"{readable}-{stable_hash(identity, n=10)}"


@dataclass
class ResultStore:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def cell_path(self, cid: str) -> Path:
        return self.root / "cells" / f"{cid}.json"

    def samples_path(self, cid: str) -> Path:
        return self.root / "samples" / f"{cid}.jsonl"

    def is_done(self, cid: str) -> bool:
        """A cell is done when its record exists, parses and has status 'ok'."""
        record = self.read(cid)
        return record is not None and record.get("status") == "ok"

    def read(self, cid: str) -> dict[str, Any] | None:
        path = self.cell_path(cid)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def write_samples(self, cid: str, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_text_atomic(self.samples_path(cid), text)

    def write_cell(self, record: dict[str, Any]) -> None:
        record = {"schema": SCHEMA_VERSION, **record}
        write_text_atomic(self.cell_path(record["cell_id"]), json.dumps(record, indent=1, sort_keys=True))

    def write_json(self, relative: str, data: dict[str, Any]) -> None:
        write_text_atomic(self.root / relative, json.dumps(data, indent=1, sort_keys=True))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "cells").glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue
        return out

    def model_records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "models").glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue
        return out

    def read_samples(self, cid: str) -> list[dict[str, Any]]:
        path = self.samples_path(cid)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_records(paths: Iterable[str | Path]) -> tuple[list[dict], list[dict]]:
    """Cell and model records from run directories (or single cell JSON files)."""
    cells: list[dict] = []
    models: list[dict] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            cells.append(json.loads(p.read_text()))
            continue
        roots = [p] if (p / "cells").is_dir() else sorted(q.parent for q in p.glob("*/cells"))
        for root in roots:
            store = ResultStore(root)
            cells.extend(store.records())
            models.extend(store.model_records())
    return cells, models
