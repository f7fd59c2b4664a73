"""The upload queue's SQLite database: its schema, how it is opened, one transaction per state change.

WAL, so several processes may open one queue (a node that puts and uploads, ``fleetloop queue
stats`` reading); ``synchronous=FULL`` by default, so a committed change survives a power loss, not
only a crash. :class:`Transaction` is ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any
exception. The statements on the records table are ``fleetloop_core.upload_queue``'s.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType

SCHEMA_VERSION = 1
DB_NAME = "queue.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_key TEXT NOT NULL UNIQUE,
    sidecar_key TEXT NOT NULL,
    blob TEXT NOT NULL,
    frame_sha256 TEXT NOT NULL,
    sidecar BLOB NOT NULL,
    size_bytes INTEGER NOT NULL,
    priority REAL NOT NULL,
    stamp_ns INTEGER NOT NULL,
    robot_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    queued_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    frame_uploaded INTEGER NOT NULL DEFAULT 0,
    owner INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def open_queue_db(directory: Path, synchronous: str = "full") -> tuple[sqlite3.Connection, int]:
    """Open (creating when new) the queue database in ``directory``; return it and its schema version.

    Raises OSError or sqlite3.Error when it cannot be opened; the caller names the queue.
    """
    db = sqlite3.connect(directory / DB_NAME, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    db.executescript(_SCHEMA)
    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
    return db, int(version)


def bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add ``by`` to the lifetime counter ``name`` (uploaded, evicted, rejected), inside the caller's transaction."""
    db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, by, by))


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may already have rolled back (e.g. disk full); the original error matters


__all__ = ["DB_NAME", "SCHEMA_VERSION", "Transaction", "bump", "open_queue_db"]
