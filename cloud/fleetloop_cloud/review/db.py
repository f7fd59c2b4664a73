"""The review page's handle on the pool file: the cloud loop's ``Pool`` plus a read connection.

Writes go through ``Pool.transaction()`` (``BEGIN IMMEDIATE``: one writer at a time, across
threads and processes); reads of the review tables and counters use a second connection to the
same SQLite file, which WAL lets read while another connection writes (or a second connection to
the same PostgreSQL database). SQLite connections belong to the thread that opened them, so the app
keeps one ``ReviewDB`` per server thread.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from fleetloop_cloud.pool import Pool
from fleetloop_cloud.pool_sql import connect
from fleetloop_cloud.review import answers, leases, security


class ReviewDB:
    """The pool (writes, its API) and a read connection to the same file."""

    def __init__(self, path: str | Path):
        self.pool = Pool(path)
        self.path = self.pool.path
        self._read = connect(path, check_same_thread=True)

    def query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        """Return the rows of a read-only query."""
        return self._read.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close both connections."""
        self._read.close()
        self.pool.close()


def prepare(path: str | Path) -> None:
    """Create the pool (if absent) and the review tables in it (idempotent)."""
    db = ReviewDB(path)
    try:
        leases.ensure_schema(db.pool)
        answers.ensure_schema(db.pool)
        security.ensure_schema(db.pool)
    finally:
        db.close()


class PerThread:
    """One ReviewDB per thread that asks (server worker threads)."""

    def __init__(self, path: str | Path):
        self.path = path
        self._local = threading.local()

    def get(self) -> ReviewDB:
        """Return this thread's ReviewDB, opening it on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = ReviewDB(self.path)
        return db
