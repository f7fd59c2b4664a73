"""Answers from the review page: written in one transaction with who answered and how many seconds it took.

An answer is a class index, or ``None`` for *unusable* (the frame cannot be judged: the task
fails with the reason ``unusable``). Each call writes every answer of a submission (one frame, or
a whole audit grid) in one transaction together with its event rows
(``review_events``, append-only): the lease must be this session's (or expired and taken by
nobody), the task still open, and the answer lands in the pool's ``tasks`` row through
``Pool.answer_task`` with the *measured* seconds (clamped to ``max_answer_s``) and the dollars
the cost model prices them at. The loop reads those seconds as measured human time.

Undo re-opens a task (status back to ``submitted``, leased to the same session) as long as the
loop has not collected its answer yet (no label in the pool points at the task); after that the
label belongs to the loop, and undo answers 409. Seconds spent on an undone answer are carried
into the task's final answer, so human time is never under-counted.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from fleetloop_cloud.config import HumanCosts
from fleetloop_cloud.pool import Pool, PoolError, Task
from fleetloop_cloud.pool_sql import ROW_WAIT
from fleetloop_cloud.review.errors import Conflict, Invalid, NotFound, ReviewError
from fleetloop_cloud.review.leases import REVIEW_BACKEND, expire, grant, lease_of

if TYPE_CHECKING:
    from fleetloop_cloud.review.db import ReviewDB

UNUSABLE_REASON = "unusable"  # tasks.error of frames an annotator marked unusable (prefix)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_events (
    id INTEGER PRIMARY KEY, batch TEXT NOT NULL, task_id INTEGER NOT NULL, frame_id TEXT NOT NULL,
    annotator TEXT NOT NULL, action TEXT NOT NULL, label INTEGER, seconds REAL, undone INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS review_events_annotator ON review_events(annotator, id);
CREATE INDEX IF NOT EXISTS review_events_task ON review_events(task_id);
"""

ANSWER_ACTIONS = ("answer", "unusable")


@dataclass(frozen=True)
class Submission:
    """One answer: the task, the class index (None: unusable) and the seconds the annotator spent."""

    task_id: int
    label: Optional[int]
    seconds: float


def ensure_schema(pool: Pool) -> None:
    """Create the event table in the pool file if absent (idempotent)."""
    with pool.transaction() as db:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)


def review_task(pool: Pool, task_id: int) -> Task:
    """Return a task of the review page; NotFound if absent or submitted to another annotator."""
    try:
        task = pool.task(task_id)
    except PoolError:
        raise NotFound(f"task {task_id} does not exist") from None
    if task.backend != REVIEW_BACKEND:
        raise NotFound(f"task {task_id} is not a review-page task (annotator {task.backend})")
    return task


def collected(db: sqlite3.Connection, task_id: int) -> bool:
    """Return whether the loop has already applied this task's answer (``tasks.applied``, or a label citing it)."""
    row = db.execute("SELECT applied FROM tasks WHERE id=?", (task_id,)).fetchone()
    if row is not None and row[0]:
        return True
    return bool(db.execute("SELECT 1 FROM labels WHERE task_id=?", (task_id,)).fetchall())


def _carried_seconds(db: sqlite3.Connection, task_id: int) -> float:
    row = db.execute(
        "SELECT COALESCE(SUM(seconds), 0) FROM review_events WHERE task_id=? AND undone=1 "
        "AND action IN ('answer', 'unusable')",
        (task_id,),
    ).fetchone()
    return float(row[0])


def _lock_tasks(db, task_ids: Sequence[int]) -> None:
    """Lock the task rows an answer or an undo changes (PostgreSQL; in id order, so two never deadlock).

    A row-locked transaction takes no pool-wide lock: answers go on while a loop worker writes. The
    loop's collection locks the rows it applies (``unapplied``): an undo waits for it and then finds the
    answer collected, or the collection passes over the row the undo holds.
    """
    if task_ids:
        marks = ",".join("?" * len(task_ids))
        db.execute(f"SELECT id FROM tasks WHERE id IN ({marks}) ORDER BY id{ROW_WAIT}", list(task_ids)).fetchall()


def _check_leased_to(db, task, session: str) -> None:
    """Raise Conflict unless ``session`` holds the task's lease (or nobody else holds its frame)."""
    lease = lease_of(db, task.id)
    if lease is not None and lease.session != session:
        raise Conflict(
            f"task {task.id}: the frame is leased to {lease.annotator}, not to this session "
            f"(a lease of yours may have expired)"
        )
    if lease is None:
        taken = db.execute(
            "SELECT annotator FROM review_leases WHERE frame_id=? AND session != ?", (task.frame_id, session)
        ).fetchall()
        if taken:
            raise Conflict(
                f"task {task.id}: the frame is leased to {taken[0][0]}, not to this session "
                f"(a lease of yours may have expired)"
            )


def submit(
    pool: Pool,
    human: HumanCosts,
    n_labels: int,
    annotator: str,
    session: str,
    submissions: Sequence[Submission],
    now: float,
    max_answer_s: float,
) -> str:
    """Write answers atomically (all or none); return the batch id. ReviewError (404/409/400) when refused."""
    if not submissions:
        raise ReviewError("no answers in the submission")
    if len({s.task_id for s in submissions}) != len(submissions):
        raise ReviewError("a task appears twice in one submission")
    batch = uuid.uuid4().hex
    with pool.transaction(row_locks=True) as db:
        _lock_tasks(db, [s.task_id for s in submissions])
        expire(db, now)
        for item in submissions:
            task = review_task(pool, item.task_id)
            if item.label is not None and not 0 <= int(item.label) < n_labels:
                raise Invalid(f"task {task.id}: label: must be a class index 0..{n_labels - 1} (got {item.label})")
            if task.status not in ("open", "submitted"):
                raise Conflict(f"task {task.id} is already answered ({task.status})")
            _check_leased_to(db, task, session)
            seconds = min(max(float(item.seconds), 0.0), max_answer_s) + _carried_seconds(db, task.id)
            dollars = human.task_price(seconds)
            if item.label is None:
                pool.fail_task(task.id, f"{UNUSABLE_REASON}: marked by {annotator} on the review page")
                db.execute(
                    "UPDATE tasks SET annotator=?, seconds=?, dollars=? WHERE id=?",
                    (annotator, seconds, dollars, task.id),
                )
            else:
                pool.answer_task(task.id, int(item.label), annotator, seconds, dollars)
            db.execute(
                "INSERT INTO review_events (batch, task_id, frame_id, annotator, action, label, seconds, created) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    batch,
                    task.id,
                    task.frame_id,
                    annotator,
                    "answer" if item.label is not None else "unusable",
                    item.label,
                    min(max(float(item.seconds), 0.0), max_answer_s),
                    now,
                ),
            )
            db.execute("DELETE FROM review_leases WHERE task_id=?", (task.id,))
    return batch


def _events_to_undo(db, pool: Pool, annotator: str, task_id: int | None, purposes: Sequence[str] | None) -> list:
    """Return the answer events an undo re-opens: the annotator's last batch (of ``purposes``), or one task's."""
    if task_id is not None:
        review_task(pool, task_id)
        events = db.execute(
            "SELECT * FROM review_events WHERE task_id=? AND undone=0 AND action IN "
            "('answer', 'unusable') ORDER BY id DESC LIMIT 1",
            (task_id,),
        ).fetchall()
        if not events:
            raise Conflict(f"task {task_id} has no answer to undo")
        return events
    where, params = "", []
    if purposes:
        where = f" AND t.purpose IN ({','.join('?' * len(purposes))})"
        params = list(purposes)
    last = db.execute(
        "SELECT e.batch FROM review_events e JOIN tasks t ON t.id = e.task_id WHERE "
        "e.annotator=? AND e.undone=0 AND e.action IN ('answer', 'unusable')" + where + " ORDER BY e.id DESC LIMIT 1",
        (annotator, *params),
    ).fetchall()
    if not last:
        raise Conflict(f"{annotator} has no answer left to undo")
    return db.execute("SELECT * FROM review_events WHERE batch=? AND undone=0 ORDER BY id", (last[0][0],)).fetchall()


def undo(
    pool: Pool,
    annotator: str,
    session: str,
    now: float,
    lease_s: float,
    task_id: int | None = None,
    purposes: Sequence[str] | None = None,
) -> list[int]:
    """Re-open the annotator's last submission (of tasks of ``purposes``) or one task; lease it back; return task ids.

    Conflict when the answer is someone else's, was already collected by the loop, or there is
    nothing left to undo.
    """
    with pool.transaction(row_locks=True) as db:
        events = _events_to_undo(db, pool, annotator, task_id, purposes)
        _lock_tasks(db, [int(event["task_id"]) for event in events])
        expire(db, now)
        reopened = []
        for event in events:
            tid = int(event["task_id"])
            if event["annotator"] != annotator:
                raise Conflict(f"task {tid} was answered by {event['annotator']}, not {annotator}")
            if collected(db, tid):
                raise Conflict(
                    f"task {tid}: the loop already collected this answer into the pool's labels; "
                    f"it can no longer be undone here"
                )
            # the pool has no "re-open"; the review page owns this transition of its own tasks
            cursor = db.execute(
                "UPDATE tasks SET status='submitted', answer=NULL, annotator=NULL, seconds=NULL, dollars=NULL, "
                "done=NULL, error=NULL WHERE id=? AND backend=? AND status IN ('done', 'failed')",
                (tid, REVIEW_BACKEND),
            )
            if cursor.rowcount != 1:
                raise Conflict(f"task {tid} is not answered any more")
            db.execute("UPDATE review_events SET undone=1 WHERE id=?", (event["id"],))
            db.execute(
                "INSERT INTO review_events (batch, task_id, frame_id, annotator, action, label, seconds, "
                "created) VALUES (?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, tid, event["frame_id"], annotator, "undo", None, None, now),
            )
            db.execute("DELETE FROM review_leases WHERE task_id=?", (tid,))
            grant(db, tid, event["frame_id"], annotator, session, now + len(reopened) * 1e-6, lease_s)
            reopened.append(tid)
        return reopened


def history(db: "ReviewDB", annotator: str, limit: int = 50) -> list[sqlite3.Row]:
    """Return the annotator's answers not undone, newest first (task, frame, label, seconds, created)."""
    return db.query(
        "SELECT task_id, frame_id, action, label, seconds, created, batch FROM review_events "
        "WHERE annotator=? AND undone=0 AND action IN ('answer', 'unusable') ORDER BY id DESC LIMIT ?",
        (annotator, limit),
    )


def unusable_frames(db: "ReviewDB") -> set[str]:
    """Return frames an annotator marked unusable (for the loop: do not route them to humans again)."""
    rows = db.query("SELECT frame_id FROM tasks WHERE status='failed' AND error LIKE ?", (f"{UNUSABLE_REASON}:%",))
    return {r[0] for r in rows}
