"""Leases: which annotator's browser holds which review-page task, until when.

A task the loop submitted to the ``review-page`` annotator is handed to one browser session at a
time, with an expiry (``lease_s``). Two sessions never hold the same task, nor two tasks of the
same frame; a lease nobody answers expires and its task returns to the queue. Leases live in
their own table (``review_leases``) in the pool, created idempotently; the table itself holds the
rule (the task is its key, and a unique index allows one lease per frame; pools made before it
also had a plain index on the frame, dropped as redundant), so a claim that loses a
race to another session's lease inserts nothing and moves on to the next task.

A claim runs in a ``row_locks`` transaction (``PoolTables.transaction(row_locks=True)``): on
PostgreSQL it takes no pool-wide lock, locks the task rows it selects with ``FOR UPDATE SKIP LOCKED``
and passes over those another claim holds, so several review-server processes hand out tasks at once
while the loop's writers go on; on SQLite it is one ``BEGIN IMMEDIATE`` writer as before. Skips,
log-outs, answers and undos (``answers``) are row-locked the same way (an answer waits for the task
rows it changes, ``pool_sql.ROW_WAIT``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from fleetloop_cloud.pool import Pool
from fleetloop_cloud.pool_sql import ROW_LOCK
from fleetloop_cloud.review.errors import Conflict

if TYPE_CHECKING:
    from fleetloop_cloud.review.db import ReviewDB

REVIEW_BACKEND = "review-page"
LABEL_PURPOSES = ("calibration", "track", "review", "second-opinion")  # one frame at a time
GRID_PURPOSES = ("audit",)  # confirm or correct many auto-labels at once
# the confirm grid: suggestions of one class, many at once (a track's representative or a review frame)
CONFIRM_PURPOSES = ("track", "review")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_leases (
    task_id INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, annotator TEXT NOT NULL, session TEXT NOT NULL,
    leased REAL NOT NULL, expires REAL NOT NULL);
DROP INDEX IF EXISTS review_leases_frame;
CREATE UNIQUE INDEX IF NOT EXISTS review_leases_one_per_frame ON review_leases(frame_id);
CREATE INDEX IF NOT EXISTS review_leases_session ON review_leases(session);
CREATE TABLE IF NOT EXISTS review_skips (
    session TEXT NOT NULL, task_id INTEGER NOT NULL, skipped REAL NOT NULL, PRIMARY KEY (session, task_id));
"""


@dataclass(frozen=True)
class Lease:
    """One task held by one browser session until ``expires`` (epoch seconds)."""

    task_id: int
    frame_id: str
    annotator: str
    session: str
    leased: float
    expires: float


def ensure_schema(pool: Pool) -> None:
    """Create the lease tables in the pool file if absent (idempotent)."""
    with pool.transaction() as db:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        int(row["task_id"]),
        row["frame_id"],
        row["annotator"],
        row["session"],
        float(row["leased"]),
        float(row["expires"]),
    )


def expire(db: sqlite3.Connection, now: float) -> list[Lease]:
    """Delete leases past their expiry (inside a transaction); return them."""
    rows = db.execute("SELECT * FROM review_leases WHERE expires <= ?", (now,)).fetchall()
    if rows:
        db.execute("DELETE FROM review_leases WHERE expires <= ?", (now,))
    return [_lease(r) for r in rows]


def lease_of(db: sqlite3.Connection, task_id: int) -> Lease | None:
    """Return the lease on a task, or None."""
    rows = db.execute("SELECT * FROM review_leases WHERE task_id=?", (task_id,)).fetchall()
    return _lease(rows[0]) if rows else None


def held(db: sqlite3.Connection, session: str, purposes: Sequence[str]) -> list[Lease]:
    """Return the session's leases on still-open tasks of ``purposes``, most recently leased first."""
    marks = ",".join("?" * len(purposes))
    rows = db.execute(
        f"SELECT l.* FROM review_leases l JOIN tasks t ON t.id = l.task_id WHERE l.session=? "
        f"AND t.status='submitted' AND t.purpose IN ({marks}) ORDER BY l.leased DESC, l.task_id DESC",
        (session, *purposes),
    ).fetchall()
    return [_lease(r) for r in rows]


def grant(
    db: sqlite3.Connection, task_id: int, frame_id: str, annotator: str, session: str, now: float, lease_s: float
) -> Lease:
    """Lease one task to a session (inside a transaction); Conflict if someone else holds it or its frame."""
    other = db.execute(
        "SELECT session FROM review_leases WHERE (task_id=? OR frame_id=?) AND session != ?",
        (task_id, frame_id, session),
    ).fetchall()
    if other:
        raise Conflict(f"task {task_id}: frame {frame_id[:12]} is leased to another annotator")
    # the session's own lease of the task or of another task of the frame gives way to this one
    db.execute("DELETE FROM review_leases WHERE (task_id=? OR frame_id=?) AND session=?", (task_id, frame_id, session))
    lease = _try_grant(db, task_id, frame_id, annotator, session, now, lease_s)
    if lease is None:
        raise Conflict(f"task {task_id}: frame {frame_id[:12]} was leased to another annotator just now")
    return lease


def _try_grant(
    db: sqlite3.Connection, task_id: int, frame_id: str, annotator: str, session: str, now: float, lease_s: float
) -> Lease | None:
    """Insert a lease unless the task or its frame is leased already (the table's keys decide); None if so."""
    inserted = db.execute(
        "INSERT OR IGNORE INTO review_leases (task_id, frame_id, annotator, session, leased, expires) "
        "VALUES (?,?,?,?,?,?)",
        (task_id, frame_id, annotator, session, now, now + lease_s),
    ).rowcount
    return Lease(task_id, frame_id, annotator, session, now, now + lease_s) if inserted == 1 else None


def claim(
    pool: Pool,
    annotator: str,
    session: str,
    purposes: Sequence[str],
    count: int,
    now: float,
    lease_s: float,
    suggestion: int | None = None,
) -> list[Lease]:
    """Return up to ``count`` leases for a session: those it holds (renewed), then the oldest free tasks.

    Free means: submitted to the review page, of one of ``purposes`` (and suggesting class
    ``suggestion``, when given), and neither the task nor its frame leased to anyone. Tasks this
    session skipped come last. Expired leases are dropped first. Row-locked (the module's
    docstring): on PostgreSQL two sessions claim at once.
    """
    marks = ",".join("?" * len(purposes))
    of_class, class_param = ("AND t.suggestion = ? ", [suggestion]) if suggestion is not None else ("", [])
    skipped = "(SELECT s.skipped FROM review_skips s WHERE s.task_id = t.id AND s.session = ?)"
    with pool.transaction(row_locks=True) as db:
        expire(db, now)
        mine = held(db, session, purposes)[:count]
        for lease in mine:
            db.execute("UPDATE review_leases SET expires=? WHERE task_id=?", (now + lease_s, lease.task_id))
        out = [Lease(m.task_id, m.frame_id, m.annotator, m.session, m.leased, now + lease_s) for m in mine]
        if len(out) >= count:
            return out
        frames = {lease.frame_id for lease in out}
        rows = db.execute(
            f"SELECT t.id, t.frame_id FROM tasks t "
            f"WHERE t.status='submitted' AND t.backend=? AND t.purpose IN ({marks}) {of_class}"
            f"AND t.id NOT IN (SELECT task_id FROM review_leases) "
            f"AND t.frame_id NOT IN (SELECT frame_id FROM review_leases) "
            f"ORDER BY {skipped} IS NOT NULL, {skipped}, t.id LIMIT ?{ROW_LOCK}",
            (REVIEW_BACKEND, *purposes, *class_param, session, session, (count - len(out)) * 4 + 16),
        ).fetchall()
        for row in rows:
            if len(out) >= count:
                break
            if row["frame_id"] in frames:
                continue  # two tasks of one frame: never both in one hand
            lease = _try_grant(db, int(row["id"]), row["frame_id"], annotator, session, now, lease_s)
            if lease is not None:  # None: another session's claim took the task or its frame meanwhile
                frames.add(row["frame_id"])
                out.append(lease)
        return out


def largest_suggested_class(db: "ReviewDB", purposes: Sequence[str], now: float) -> int | None:
    """Return the class most free tasks of ``purposes`` suggest (a confirm grid's class), or None."""
    marks = ",".join("?" * len(purposes))
    rows = db.query(
        f"SELECT t.suggestion, COUNT(*) AS n FROM tasks t WHERE t.status='submitted' AND t.backend=? "
        f"AND t.purpose IN ({marks}) AND t.suggestion IS NOT NULL "
        f"AND t.frame_id NOT IN (SELECT frame_id FROM review_leases WHERE expires > ?) "
        f"GROUP BY t.suggestion ORDER BY n DESC, t.suggestion LIMIT 1",
        (REVIEW_BACKEND, *purposes, now),
    )
    return int(rows[0][0]) if rows else None


def skip(pool: Pool, session: str, task_id: int, now: float) -> None:
    """Give a leased task back to the queue; this session gets it again only after every other task."""
    with pool.transaction(row_locks=True) as db:
        lease = lease_of(db, task_id)
        if lease is None or lease.session != session:
            raise Conflict(f"task {task_id} is not leased to this session")
        db.execute("DELETE FROM review_leases WHERE task_id=?", (task_id,))
        db.execute(
            "INSERT OR REPLACE INTO review_skips (session, task_id, skipped) VALUES (?,?,?)", (session, task_id, now)
        )


def release_session(pool: Pool, session: str) -> int:
    """Give back every lease of a session (log-out); return how many."""
    with pool.transaction(row_locks=True) as db:
        return db.execute("DELETE FROM review_leases WHERE session=?", (session,)).rowcount
