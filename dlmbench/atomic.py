"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

Every file gets the mode an ordinary ``open()`` would give it (0666 less the umask), not
the 0600 of the temporary file it was written as, so a run's files all read alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def temp_file(path: Path) -> tuple[int, str]:
    """``mkstemp`` beside ``path``, named ``.<name>.<pid>.<random>.tmp`` so that a later
    run can tell the leftovers of a killed writer from a live writer's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files in ``directory`` whose writer is no longer running (a run
    killed mid-write leaves one); returns them. Files of live writers are kept."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        parts = tmp.name.split(".")  # ['', name..., pid, random, 'tmp']
        pid = parts[-3] if len(parts) >= 5 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename over ``path``, fsync dir."""
    path = Path(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
