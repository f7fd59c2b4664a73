"""The robot's upload queue: kept frames wait on disk until they are in the object store.

Layout of a queue directory::

    queue.db              SQLite (WAL): one row per record (keys, sidecar JSON, priority, state)
    blobs/<name>.png|jpg  the encoded frames, written with fsync + rename (never half a file)

Guarantees:

- **Crash-safe.** A frame file is complete (fsync, rename, directory fsync) before the row that
  names it commits; every state change is one SQLite transaction. After ``kill -9`` at any
  instant a record is either queued (and will be uploaded) or was never accepted; files left
  without a row are swept by :meth:`UploadQueue.recover`.
- **At-least-once, idempotent.** Object keys carry the frame's content sha256
  (``fleetloop_core.contracts.sidecar.frame_key``), so uploading a record again after a crash rewrites
  the same objects, never makes a second copy. The frame object goes first and the sidecar
  last: the cloud treats the sidecar as the commit marker.
- **Bounded.** A disk cap in bytes: when a new record does not fit (or the disk is really full,
  ENOSPC), the lowest-priority records are evicted first (oldest first among equals), never the
  record being uploaded, never one more valuable than the newcomer.
- **Polite.** A bandwidth cap (bytes/s) and exponential back-off with jitter while the store is
  unreachable; a store that refuses the credentials stops the drain with a clear error and
  leaves every record queued (:class:`fleetloop_core.uploader.Uploader`).

The queue persists; it does not decide (``fleetloop_core.selection`` decides). How one frame file is
made durable is ``fleetloop_core.queue_files``; the schema and the transactions, ``fleetloop_core.queue_db``.

~450 lines as one module on purpose: every method of :class:`UploadQueue` is a step of the crash-safety
protocol above (file before row, one transaction per state change, row before file on removal,
recovery) and its SQL, which read together; the rest is its config and the records it hands out.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from fleetloop_core.config import ConfigModel, default_config_path, load_config
from fleetloop_core.durable import process_alive
from fleetloop_core.errors import FleetLoopError
from fleetloop_core.queue_db import SCHEMA_VERSION, Transaction, bump, open_queue_db
from fleetloop_core.queue_files import BlobDir, disk_full
from fleetloop_core.record import EncodedRecord, UploadRecord

log = logging.getLogger(__name__)

BLOB_DIR = "blobs"


class QueueError(FleetLoopError):
    """The queue cannot be opened or written (message names the queue directory and cause)."""


class CorruptRecord(QueueError):
    """A queued frame file is missing or does not match its sha256 (disk corruption, tampering)."""


# --------------------------------------------------------------------------- config


class BackoffConfig(ConfigModel):
    """Retry delays while the store is unreachable: initial x multiplier^(n-1), capped, jittered."""

    initial_s: float = Field(default=1.0, gt=0.0)
    # 60 s: after a 5-minute store outage a 300 s cap left the fleet's queues draining for 199 s more
    # (docs/scaling.md); a try a minute per robot is 17 requests/s for 1,000 robots
    max_s: float = Field(default=60.0, gt=0.0)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)  # delay x uniform(1 - jitter, 1)


class QueueConfig(ConfigModel):
    """Where the queue lives, how big it may grow, and how it uploads (``config/upload_queue.yaml``)."""

    directory: str = "/var/lib/fleetloop/queue"
    store: str = "file:///var/lib/fleetloop/store"
    disk_cap_bytes: int = Field(default=2 * 1024**3, gt=0)
    bandwidth_bytes_per_s: float = Field(default=0.0, ge=0.0)  # 0: unlimited
    backoff: BackoffConfig = BackoffConfig()
    synchronous: Literal["full", "normal"] = "full"  # full: durable across power loss, not only crashes
    idle_poll_s: float = Field(default=0.5, gt=0.0)  # uploader thread wait when the queue is empty
    orphan_grace_s: float = Field(default=60.0, ge=0.0)


def load_queue_config(path: str | Path | None = None) -> QueueConfig:
    """Return the queue config in ``path`` (default ``config/upload_queue.yaml``)."""
    return load_config(QueueConfig, path if path is not None else default_config_path("upload_queue.yaml"))


# --------------------------------------------------------------------------- records on disk


@dataclass(frozen=True)
class PutResult:
    """What :meth:`UploadQueue.put` did: accepted or not, why, and which records it evicted."""

    accepted: bool
    frame_key: str
    reason: str = ""
    already_queued: bool = False
    evicted: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueuedRecord:
    """One claimed record (in flight until completed or released)."""

    id: int
    frame_key: str
    sidecar_key: str
    blob: Path
    frame_sha256: str
    sidecar: bytes
    size_bytes: int
    priority: float
    frame_uploaded: bool
    robot_id: str
    stream: str


@dataclass
class QueueStats:
    """Counts and sizes (bytes) of a queue."""

    directory: str
    records: int
    bytes: int
    disk_cap_bytes: int
    in_flight: int
    frame_uploaded: int
    corrupt: int
    oldest_stamp_ns: int | None
    newest_stamp_ns: int | None
    uploaded_total: int
    evicted_total: int
    rejected_total: int
    last_error: str | None
    by_robot: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class UploadQueue:
    """Records on the robot's disk, waiting for the store; safe to share between threads.

    Several processes may open the same queue (SQLite WAL): a node that puts and uploads, and
    ``fleetloop queue stats`` reading. Run one uploader per queue.
    """

    def __init__(self, directory: str | Path, disk_cap_bytes: int = 2 * 1024**3, synchronous: str = "full"):
        self.directory = Path(directory)
        self.disk_cap_bytes = int(disk_cap_bytes)
        self.blobs = self.directory / BLOB_DIR
        self._lock = threading.RLock()
        try:
            self._files = BlobDir(self.blobs)
            self._db, version = open_queue_db(self.directory, synchronous)
        except (OSError, sqlite3.Error) as exc:
            raise QueueError(f"{self.directory}: cannot open the upload queue ({exc})") from exc
        if version != SCHEMA_VERSION:
            raise QueueError(f"{self.directory}: queue schema {version}, this FleetLoop reads {SCHEMA_VERSION}")

    @classmethod
    def from_config(cls, config: QueueConfig) -> "UploadQueue":
        return cls(config.directory, config.disk_cap_bytes, config.synchronous)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "UploadQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _transaction(self) -> Transaction:
        return Transaction(self._db)

    def _victims(self, needed: int, priority: float) -> list[tuple[int, str, str, int]] | None:
        """Return (id, frame_key, blob, size) of the records to evict so ``needed`` more bytes fit.

        None when the cap cannot be met without evicting records more valuable than ``priority``.
        """
        total = self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM records").fetchone()[0]
        excess = total + needed - self.disk_cap_bytes
        if excess <= 0:
            return []
        victims, freed = [], 0
        rows = self._db.execute(
            "SELECT id, frame_key, blob, size_bytes FROM records WHERE owner IS NULL AND priority <= ? "
            "ORDER BY priority ASC, id ASC",
            (priority,),
        )
        for row in rows:
            victims.append(row)
            freed += row[3]
            if freed >= excess:
                break
        return victims if freed >= excess else None

    # ------------------------------------------------------------------ put
    def put(self, record: UploadRecord | EncodedRecord) -> PutResult:
        """Persist one record; return whether it was accepted (and which records made room for it).

        Encodes an :class:`UploadRecord` first. Never raises for a full disk: the lowest-priority
        records are evicted, and when nothing less valuable is left the newcomer is rejected.
        """
        encoded = record.encode() if isinstance(record, UploadRecord) else record
        sidecar_json = encoded.sidecar_json
        size = len(encoded.frame) + len(sidecar_json)
        key = encoded.frame_key
        if size > self.disk_cap_bytes:
            return self._reject(key, f"record of {size} bytes is larger than the disk cap ({self.disk_cap_bytes})")
        with self._lock:
            if self._db.execute("SELECT 1 FROM records WHERE frame_key = ?", (key,)).fetchone():
                return PutResult(True, key, "already queued", already_queued=True)
            blob = self._files.name_for(encoded)
            evicted: list[str] = []
            for _ in range(64):
                try:
                    self._files.write(blob, encoded.frame)
                    victims = self._insert(encoded, blob, size, evicted)
                    self._files.unlink(victim[2] for victim in victims)
                    return PutResult(True, key, "queued", evicted=tuple(evicted))
                except _NoRoom:
                    self._files.unlink([blob])
                    return self._reject(key, "queue full of records at least as valuable", evicted)
                except (OSError, sqlite3.OperationalError) as exc:
                    if not disk_full(exc):
                        self._files.unlink([blob])
                        raise QueueError(f"{self.directory}: cannot queue {key} ({exc})") from exc
                    # the disk is full below our cap: make room from less valuable records, retry
                    freed = self._evict_one(encoded.priority)
                    if freed is None:
                        self._files.unlink([blob])
                        return self._reject(
                            key,
                            f"disk full ({exc.strerror if isinstance(exc, OSError) else exc})"
                            " and nothing less valuable to evict",
                            evicted,
                        )
                    evicted.append(freed)
            self._files.unlink([blob])
            return self._reject(key, "disk full after evicting 64 records", evicted)

    def _insert(
        self, encoded: EncodedRecord, blob: str, size: int, evicted: list[str]
    ) -> list[tuple[int, str, str, int]]:
        """Evict what must make room and insert the record's row, in one transaction; return the victims.

        Raises _NoRoom when only records at least as valuable are left (nothing changes then).
        """
        with self._transaction():
            victims = self._victims(size, encoded.priority)
            if victims is None:
                raise _NoRoom()
            for victim_id, victim_key, _, _ in victims:
                self._db.execute("DELETE FROM records WHERE id = ?", (victim_id,))
                evicted.append(victim_key)
            if victims:
                bump(self._db, "evicted", len(victims))
            sidecar = encoded.sidecar
            self._db.execute(
                "INSERT INTO records (frame_key, sidecar_key, blob, frame_sha256, sidecar, size_bytes,"
                " priority, stamp_ns, robot_id, stream, queued_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    encoded.frame_key,
                    encoded.sidecar_key,
                    blob,
                    sidecar.frame_sha256,
                    encoded.sidecar_json,
                    size,
                    encoded.priority,
                    sidecar.stamp_ns,
                    sidecar.robot_id,
                    sidecar.stream,
                    time.time(),
                ),
            )
        return victims

    def _evict_one(self, priority: float) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, frame_key, blob FROM records WHERE owner IS NULL AND priority <= ? "
                "ORDER BY priority ASC, id ASC LIMIT 1",
                (priority,),
            ).fetchone()
            if row is None:
                return None
            with self._transaction():
                self._db.execute("DELETE FROM records WHERE id = ?", (row[0],))
                bump(self._db, "evicted")
            self._files.unlink([row[2]])
            log.warning("%s: disk full, evicted %s", self.directory, row[1])
            return row[1]

    def _reject(self, key: str, reason: str, evicted: list[str] | None = None) -> PutResult:
        with self._lock:
            try:
                with self._transaction():
                    bump(self._db, "rejected")
            except sqlite3.Error:
                pass  # counting a rejection must not turn a full disk into a crash
        return PutResult(False, key, reason, evicted=tuple(evicted or ()))

    # ------------------------------------------------------------------ upload side
    def claim(self, owner: int | None = None) -> QueuedRecord | None:
        """Return the most valuable queued record, marked in flight by ``owner`` (default: this pid)."""
        owner = os.getpid() if owner is None else owner
        with self._lock, self._transaction():
            row = self._db.execute(
                "SELECT id, frame_key, sidecar_key, blob, frame_sha256, sidecar, size_bytes, priority,"
                " frame_uploaded, robot_id, stream FROM records WHERE owner IS NULL AND state = 'queued' "
                "ORDER BY priority DESC, id ASC LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE records SET owner = ? WHERE id = ?", (owner, row[0]))
        return QueuedRecord(
            id=row[0],
            frame_key=row[1],
            sidecar_key=row[2],
            blob=self.blobs / row[3],
            frame_sha256=row[4],
            sidecar=bytes(row[5]),
            size_bytes=row[6],
            priority=row[7],
            frame_uploaded=bool(row[8]),
            robot_id=row[9],
            stream=row[10],
        )

    def mark_frame_uploaded(self, record_id: int) -> None:
        """Record that the frame object is in the store (only the sidecar is left to upload)."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE records SET frame_uploaded = 1 WHERE id = ?", (record_id,))

    def complete(self, record_id: int) -> None:
        """Remove an uploaded record (row first, then its file: a crash in between leaves an orphan file)."""
        with self._lock:
            with self._transaction():
                row = self._db.execute("SELECT blob FROM records WHERE id = ?", (record_id,)).fetchone()
                self._db.execute("DELETE FROM records WHERE id = ?", (record_id,))
                bump(self._db, "uploaded")
            if row:
                self._files.unlink([row[0]])

    def release(self, record_id: int, error: str | None = None) -> None:
        """Put a claimed record back in the queue (upload failed), noting the error."""
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE records SET owner = NULL, attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, record_id),
            )

    def mark_corrupt(self, record_id: int, error: str) -> None:
        """Set a record aside: its frame file is missing or damaged (kept for inspection, never uploaded)."""
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE records SET owner = NULL, state = 'corrupt', last_error = ? WHERE id = ?", (error, record_id)
            )

    def recover(self, orphan_grace_s: float = 60.0) -> dict[str, int]:
        """Return what crash recovery did: records released from dead uploaders, orphan files removed.

        Files without a row are removed only when older than ``orphan_grace_s`` (another process
        may be between writing a file and committing its row).
        """
        released = 0
        with self._lock:
            owners = [row[0] for row in self._db.execute("SELECT DISTINCT owner FROM records WHERE owner IS NOT NULL")]
            for owner in owners:
                if owner == os.getpid() or not process_alive(owner):
                    with self._transaction():
                        released += self._db.execute(
                            "UPDATE records SET owner = NULL WHERE owner = ?", (owner,)
                        ).rowcount
            known = {row[0] for row in self._db.execute("SELECT blob FROM records")}
        return {"released": released, "orphans_removed": self._files.sweep(known, orphan_grace_s)}

    # ------------------------------------------------------------------ inspection
    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM records WHERE state = 'queued'").fetchone()[0]

    def keys(self) -> list[str]:
        """Return the frame keys of every record (queued, in flight or corrupt)."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT frame_key FROM records ORDER BY id")]

    def stats(self) -> QueueStats:
        """Return counts, bytes and lifetime counters."""
        with self._lock:
            db = self._db
            records, size, in_flight, uploaded, corrupt, oldest, newest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0), COUNT(owner), COALESCE(SUM(frame_uploaded), 0),"
                " COALESCE(SUM(state = 'corrupt'), 0), MIN(stamp_ns), MAX(stamp_ns) FROM records"
            ).fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            error = db.execute(
                "SELECT last_error FROM records WHERE last_error IS NOT NULL ORDER BY attempts DESC LIMIT 1"
            ).fetchone()
            by_robot = dict(db.execute("SELECT robot_id, COUNT(*) FROM records GROUP BY robot_id").fetchall())
        return QueueStats(
            directory=str(self.directory),
            records=records,
            bytes=size,
            disk_cap_bytes=self.disk_cap_bytes,
            in_flight=in_flight,
            frame_uploaded=uploaded,
            corrupt=corrupt,
            oldest_stamp_ns=oldest,
            newest_stamp_ns=newest,
            uploaded_total=counters.get("uploaded", 0),
            evicted_total=counters.get("evicted", 0),
            rejected_total=counters.get("rejected", 0),
            last_error=error[0] if error else None,
            by_robot=by_robot,
        )

    def purge(self, include_in_flight: bool = False, corrupt_only: bool = False) -> int:
        """Delete records (default: all not in flight); return how many."""
        where = ["1"]
        if not include_in_flight:
            where.append("owner IS NULL")
        if corrupt_only:
            where.append("state = 'corrupt'")
        condition = " AND ".join(where)
        with self._lock:
            with self._transaction():
                blobs = [row[0] for row in self._db.execute(f"SELECT blob FROM records WHERE {condition}")]
                self._db.execute(f"DELETE FROM records WHERE {condition}")
            self._files.unlink(blobs)
        return len(blobs)


class _NoRoom(Exception):
    pass
