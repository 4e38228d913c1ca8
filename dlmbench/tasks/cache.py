"""The on-disk cache of built task data, under ``context.tasks``.

An entry is a directory ``NAME-KEY`` holding one row file per array (``train.bin``,
``valid.bin``, ``eval_prefixes.bin``), ``tokenizer.json`` and ``meta.json`` (shapes,
the spec, the tokenizer's special ids, references, sources, info). ``KEY`` hashes
everything the data depend on: the task and its argument, its config (less the
settings that only say where things are cached), ``seq_len`` (and ``num_eval``/``seed``
for conditional tasks), the source's :meth:`~dlmbench.tasks.sources.Source.stamp` and
the tokenizer's. ``CACHE_FORMAT`` changes when the files of an entry do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlmbench.data import DataSpec
from dlmbench.task import TaskData
from dlmbench.tasks.rows import read_rows
from dlmbench.tokenizer import TextTokenizer, tokenizer_from_meta, tokenizer_meta

CACHE_FORMAT = 1  # bump when the layout or the cache files change


def file_stamps(paths: Iterable[str | Path]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of each file (the cache key's view of the sources)."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return sorted(out)


def cache_key(obj: dict[str, Any]) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **obj}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Built:
    """What a builder returns: arrays plus everything else :class:`TaskData` holds."""

    name: str
    spec: DataSpec
    tokenizer: TextTokenizer
    arrays: dict[str, np.ndarray]  # train, valid, and eval_prefixes for conditional tasks
    references: list[str] | None = None
    sources: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _to_task_data(b: Built) -> TaskData:
    t = {k: torch.from_numpy(v) for k, v in b.arrays.items()}
    return TaskData(name=b.name, spec=b.spec, tokenizer=b.tokenizer, train=t["train"], valid=t["valid"],
                    eval_prefixes=t.get("eval_prefixes"), references=b.references, sources=b.sources,
                    info=b.info)


def _save(b: Built, directory: Path) -> None:
    shapes = {}
    for k, arr in b.arrays.items():
        path = directory / f"{k}.bin"
        if isinstance(arr, np.memmap) and arr.filename and Path(arr.filename).resolve() == path.resolve():
            pass  # written in place by a RowWriter
        else:
            np.ascontiguousarray(arr, dtype=np.int64).tofile(path)
        shapes[k] = list(arr.shape)
    (directory / "tokenizer.json").write_text(b.tokenizer.to_str(), encoding="utf-8")
    meta = {"format": CACHE_FORMAT, "name": b.name, "spec": b.spec.to_dict(), "shapes": shapes,
            "tokenizer": tokenizer_meta(b.tokenizer), "references": b.references,
            "sources": b.sources, "info": b.info}
    (directory / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _load(directory: Path) -> Built:
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    tok = tokenizer_from_meta((directory / "tokenizer.json").read_text(encoding="utf-8"), meta["tokenizer"])
    arrays = {k: read_rows(directory / f"{k}.bin", *shape) for k, shape in meta["shapes"].items()}
    return Built(meta["name"], DataSpec(**meta["spec"]), tok, arrays, meta["references"],
                 meta["sources"], meta["info"])


def cached_build(name: str, key: dict[str, Any], build: Callable[[Path | None], Built],
                 root: Path | None) -> TaskData:
    """Load the entry for ``key`` under ``root`` or run ``build`` and store its result.

    ``root`` None turns the cache off. ``build`` receives a scratch directory (None when
    the cache is off) where it may write row files directly
    (``RowWriter(width, workdir / "train.bin")``). Entries are built in a temporary
    directory and renamed into place, so concurrent builders (e.g. several ranks) never
    see a half-written entry.
    """
    start = time.perf_counter()
    if root is None:
        b = build(None)
        b.info.update(cache="off", build_seconds=round(time.perf_counter() - start, 3))
        return _to_task_data(b)
    digest = cache_key(key)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    final = root / f"{safe}-{digest}"
    reason = None
    if (final / "meta.json").is_file():
        try:
            b = _load(final)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged entry: rebuild
            shutil.rmtree(final, ignore_errors=True)
            reason = f"{type(exc).__name__}: {exc}"
        else:
            b.info.update(cache="hit", cache_dir=str(final), load_seconds=round(time.perf_counter() - start, 3))
            return _to_task_data(b)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{safe}-{digest}.", suffix=".tmp", dir=final.parent))
    try:
        b = build(work)
        b.info.update(build_seconds=round(time.perf_counter() - start, 3), cache_key=digest)
        if reason:
            b.info["rebuilt_after"] = reason
        _save(b, work)
        try:
            os.rename(work, final)
        except OSError:  # another process finished first: use its entry
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    b = _load(final)
    b.info.update(cache="miss", cache_dir=str(final))
    return _to_task_data(b)
