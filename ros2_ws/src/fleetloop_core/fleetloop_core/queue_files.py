"""The upload queue's frame files: each one whole on disk or absent, never half a file.

A file is written to a temporary name, fsynced, renamed into place and its directory fsynced
(:meth:`BlobDir.write`), so after a crash at any instant it either exists complete or not at all.
The queue's rows name these files; which comes first (the file before the row that names it, the
row's removal before the file's) is ``fleetloop_core.upload_queue``'s protocol. Files that no row
names are swept by :meth:`BlobDir.sweep`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Iterable

from fleetloop_core.record import EncodedRecord
from fleetloop_core.durable import fsync_dir


def disk_full(exc: BaseException) -> bool:
    """Return whether ``exc`` says the disk (or the user's quota) is full: ENOSPC, EDQUOT, SQLite's 'full'."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class BlobDir:
    """A directory of frame files, written atomically and durably."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def name_for(record: EncodedRecord) -> str:
        """Return the file name of ``record``'s frame: a hash of its object key, with its encoding's extension."""
        extension = "png" if record.sidecar.encoding == "png" else "jpg"
        return f"{hashlib.sha256(record.frame_key.encode()).hexdigest()[:40]}.{extension}"

    def write(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name`` atomically and durably (temp file, fsync, rename, dir fsync)."""
        target = self.path / name
        fd, temporary = tempfile.mkstemp(dir=self.path, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            fsync_dir(self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise

    def unlink(self, names: Iterable[str]) -> None:
        """Remove the files ``names`` (a missing one is already gone)."""
        for name in names:
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass

    def sweep(self, known: set[str], grace_s: float) -> int:
        """Remove the files not in ``known`` that are older than ``grace_s`` seconds; return how many.

        The grace covers another process between writing a file and committing the row that names it.
        """
        removed = 0
        now = time.time()
        for path in self.path.iterdir():
            if path.name in known:
                continue
            try:
                if now - path.stat().st_mtime >= grace_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


__all__ = ["BlobDir", "disk_full"]
