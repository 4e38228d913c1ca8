"""Row files: a split's ``(rows, seq_len)`` int64 tokens as raw little-endian bytes.

Builders write rows as they produce them (a large corpus never has to fit in memory);
the task cache keeps the files, and reading a large one maps it instead of loading it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MEMMAP_BYTES = 64 << 20  # row files larger than this are memory-mapped, not read


class RowWriter:
    """Collects ``(n, width)`` int64 rows in memory, or appends them to a raw file."""

    def __init__(self, width: int, path: Path | None = None):
        self.width, self.path, self.rows = width, path, 0
        self._parts: list[np.ndarray] = []
        self._file = open(path, "wb") if path is not None else None

    def write(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != (self.width,):
            raise ValueError(f"rows of width {rows.shape[1:]} written to a {self.width}-wide writer")
        self.rows += len(rows)
        if self._file is not None:
            np.ascontiguousarray(rows, dtype=np.int64).tofile(self._file)
        else:
            self._parts.append(rows.astype(np.int64, copy=False))

    def finish(self) -> np.ndarray:
        if self.path is not None and self._file is not None:
            self._file.close()
            self._file = None
            return read_rows(self.path, self.rows, self.width)
        if not self._parts:
            return np.zeros((0, self.width), dtype=np.int64)
        return np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]


def read_rows(path: Path, rows: int, width: int) -> np.ndarray:
    if rows == 0:
        return np.zeros((0, width), dtype=np.int64)
    if rows * width * 8 > MEMMAP_BYTES:  # copy-on-write map: lazy, writable, file untouched
        return np.memmap(path, dtype=np.int64, mode="c", shape=(rows, width))
    return np.fromfile(path, dtype=np.int64).reshape(rows, width)
