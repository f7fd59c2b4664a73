"""Box labels in the pool: detector predictions, box labels (with history) and box tasks.

The detection loop keeps frames, rounds, steps and key-values in the classification pool
(``fleetloop_cloud.pool.Pool``: the same SQLite file, the same frame states) and its box data in
the tables below, in that same file:

* ``box_predictions``: each teacher version's boxes per frame, rows ``[x0, y0, x1, y1, score, class]``
  (frame pixels) and the per-class scores when the detector exports them;
* ``box_labels`` + ``box_label_events``: the current boxes of a frame (rows ``[x0, y0, x1, y1,
  class]``), their source (human, auto) and an append-only history;
* ``box_tasks``: a human is asked to check or draw the boxes of one frame (suggestion shown or
  not); the answer is the full box list, the edits made, the measured or modelled seconds and the
  dollars; a lease lets one review page session hold a task at a time.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from fleetloop_cloud.box_consensus import BoxSet
from fleetloop_cloud.pool import LABEL_SOURCES, TASK_PURPOSES, Pool, PoolError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS box_predictions (
    frame_id TEXT NOT NULL, tier TEXT NOT NULL, version TEXT NOT NULL, rows TEXT NOT NULL, class_scores TEXT,
    PRIMARY KEY (frame_id, tier, version));
CREATE TABLE IF NOT EXISTS box_labels (
    frame_id TEXT PRIMARY KEY, rows TEXT NOT NULL, source TEXT NOT NULL, round INTEGER NOT NULL,
    confidence REAL, task_id INTEGER, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS box_label_events (
    id INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, rows TEXT, source TEXT NOT NULL, round INTEGER NOT NULL,
    reason TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS box_tasks (
    id INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, round INTEGER NOT NULL, purpose TEXT NOT NULL,
    suggestion TEXT, shown INTEGER NOT NULL DEFAULT 1, status TEXT NOT NULL, backend TEXT, answer TEXT,
    edits TEXT, annotator TEXT, seconds REAL, dollars REAL, error TEXT, created REAL NOT NULL, done REAL,
    applied INTEGER NOT NULL DEFAULT 0, lease_session TEXT, lease_until REAL, skips INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS box_tasks_round ON box_tasks(round, status);
"""


@dataclass(frozen=True)
class BoxLabel:
    """The current boxes of a frame and where they came from."""

    frame_id: str
    boxes: BoxSet
    source: str
    round: int
    confidence: Optional[float]


@dataclass(frozen=True)
class BoxTask:
    """A human task: check (or draw) the boxes of one frame."""

    id: int
    frame_id: str
    round: int
    purpose: str
    suggestion: Optional[BoxSet]
    shown: bool
    status: str  # open | submitted | done | failed
    backend: Optional[str]
    answer: Optional[BoxSet]
    edits: Optional[dict]
    annotator: Optional[str]
    seconds: Optional[float]
    dollars: Optional[float]
    error: Optional[str]


def _rows(boxes: Optional[BoxSet], with_scores: bool) -> Optional[str]:
    return None if boxes is None else json.dumps(boxes.rows(with_scores))


def _set(text: Optional[str], with_scores: bool) -> Optional[BoxSet]:
    return None if text is None else BoxSet.from_rows(json.loads(text), with_scores)


class BoxPool:
    """Box predictions, labels and tasks in the pool's SQLite file.

    Given a :class:`~fleetloop_cloud.pool.Pool`, it shares that pool's connection, so one
    ``pool.transaction()`` covers frame states and box labels together; given a path (the review
    page, another process), it opens its own connection (WAL).
    """

    def __init__(self, target: Pool | str | Path):
        self._owns = not isinstance(target, Pool)
        self.path = Path(target) if self._owns else target.path
        try:
            if self._owns:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
            else:
                self._db = target._db
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise PoolError(f"{self.path}: cannot open the box tables ({exc})") from exc
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the connection if this BoxPool opened it (a shared pool closes its own)."""
        if self._owns:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block atomically (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ predictions
    def put_predictions(self, tier: str, version: str, items: Sequence[tuple[str, BoxSet]]) -> None:
        """Store a teacher's boxes (and per-class scores) for frames."""
        rows = []
        for frame_id, boxes in items:
            scores = (
                None
                if boxes.class_scores is None
                else json.dumps([[round(float(v), 4) for v in row] for row in boxes.class_scores])
            )
            rows.append((frame_id, tier, version, json.dumps(boxes.rows(True)), scores))
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO box_predictions (frame_id, tier, version, rows, class_scores) "
                "VALUES (?,?,?,?,?)",
                rows,
            )

    def missing_predictions(self, tier: str, version: str, frame_ids: Sequence[str]) -> list[str]:
        """Return the frames without boxes from this tier version."""
        have = {
            r[0]
            for r in self._query("SELECT frame_id FROM box_predictions WHERE tier=? AND version=?", (tier, version))
        }
        return [f for f in frame_ids if f not in have]

    def predictions(self, tier: str, version: str, frame_ids: Sequence[str]) -> list[BoxSet]:
        """Return the boxes of one tier version, in the order of ``frame_ids``; PoolError if any is missing."""
        found = {
            r[0]: r
            for r in self._query(
                "SELECT frame_id, rows, class_scores FROM box_predictions WHERE tier=? AND version=?", (tier, version)
            )
        }
        missing = [f for f in frame_ids if f not in found]
        if missing:
            raise PoolError(
                f"{self.path}: no {tier} {version} boxes for {len(missing)} frame(s), e.g. {missing[0]}; "
                f"run autolabel first"
            )
        out = []
        for frame_id in frame_ids:
            row = found[frame_id]
            boxes = BoxSet.from_rows(json.loads(row[1]), True)
            if row[2] is not None and len(boxes):
                import numpy as np

                boxes = BoxSet(
                    boxes.boxes,
                    boxes.scores,
                    boxes.classes,
                    np.asarray(json.loads(row[2]), np.float32).reshape(len(boxes), -1),
                )
            out.append(boxes)
        return out

    # ------------------------------------------------------------------ labels
    def set_label(
        self,
        frame_id: str,
        boxes: BoxSet,
        source: str,
        round: int,
        reason: str,
        confidence: float | None = None,
        task_id: int | None = None,
    ) -> None:
        """Set a frame's boxes (history kept)."""
        if source not in LABEL_SOURCES:
            raise PoolError(f"{self.path}: unknown label source {source!r} (known: {', '.join(LABEL_SOURCES)})")
        now = time.time()
        text = _rows(boxes, False)
        self._db.execute(
            "INSERT OR REPLACE INTO box_labels (frame_id, rows, source, round, confidence, task_id, "
            "updated) VALUES (?,?,?,?,?,?,?)",
            (frame_id, text, source, round, confidence, task_id, now),
        )
        self._db.execute(
            "INSERT INTO box_label_events (frame_id, rows, source, round, reason, created) VALUES (?,?,?,?,?,?)",
            (frame_id, text, source, round, reason, now),
        )

    def remove_label(self, frame_id: str, round: int, reason: str) -> None:
        """Withdraw a frame's boxes (it goes back to review); the history keeps them."""
        rows = self._query("SELECT source FROM box_labels WHERE frame_id=?", (frame_id,))
        if not rows:
            return
        self._db.execute("DELETE FROM box_labels WHERE frame_id=?", (frame_id,))
        self._db.execute(
            "INSERT INTO box_label_events (frame_id, rows, source, round, reason, created) VALUES (?,?,?,?,?,?)",
            (frame_id, None, rows[0][0], round, reason, time.time()),
        )

    def labels(self, frame_ids: Iterable[str] | None = None, source: str | None = None) -> dict[str, BoxLabel]:
        """Return current box labels by frame id."""
        sql, params = "SELECT frame_id, rows, source, round, confidence FROM box_labels", []
        if source is not None:
            sql += " WHERE source=?"
            params.append(source)
        out = {
            r[0]: BoxLabel(r[0], BoxSet.from_rows(json.loads(r[1]), False), r[2], r[3], r[4])
            for r in self._query(sql, params)
        }
        if frame_ids is not None:
            wanted = set(frame_ids)
            out = {k: v for k, v in out.items() if k in wanted}
        return out

    def label_events(self, frame_id: str) -> list[sqlite3.Row]:
        """Return the box-label history of one frame, oldest first."""
        return self._query("SELECT * FROM box_label_events WHERE frame_id=? ORDER BY id", (frame_id,))

    # ------------------------------------------------------------------ tasks
    def add_tasks(
        self, round: int, purpose: str, items: Sequence[tuple[str, Optional[BoxSet]]], shown: bool = True
    ) -> list[int]:
        """Create open box tasks (frame id, suggestion or None); return their ids."""
        if purpose not in TASK_PURPOSES:
            raise PoolError(f"{self.path}: unknown task purpose {purpose!r} (known: {', '.join(TASK_PURPOSES)})")
        ids, now = [], time.time()
        with self.transaction() as db:
            for frame_id, suggestion in items:
                cursor = db.execute(
                    "INSERT INTO box_tasks (frame_id, round, purpose, suggestion, shown, status, "
                    "created) VALUES (?,?,?,?,?, 'open', ?)",
                    (frame_id, round, purpose, _rows(suggestion, False), int(shown), now),
                )
                ids.append(int(cursor.lastrowid))
        return ids

    @staticmethod
    def _task(row: sqlite3.Row) -> BoxTask:
        return BoxTask(
            id=row["id"],
            frame_id=row["frame_id"],
            round=row["round"],
            purpose=row["purpose"],
            suggestion=_set(row["suggestion"], False),
            shown=bool(row["shown"]),
            status=row["status"],
            backend=row["backend"],
            answer=_set(row["answer"], False),
            edits=json.loads(row["edits"]) if row["edits"] else None,
            annotator=row["annotator"],
            seconds=row["seconds"],
            dollars=row["dollars"],
            error=row["error"],
        )

    def tasks(
        self, round: int | None = None, purpose: str | None = None, status: str | Sequence[str] | None = None
    ) -> list[BoxTask]:
        """Return box tasks, oldest first."""
        where, params = [], []
        for column, value in (("round", round), ("purpose", purpose)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params += statuses
        rows = self._query(
            "SELECT * FROM box_tasks" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", params
        )
        return [self._task(r) for r in rows]

    def task(self, task_id: int) -> BoxTask:
        """Return one box task; PoolError if absent."""
        rows = self._query("SELECT * FROM box_tasks WHERE id=?", (task_id,))
        if not rows:
            raise PoolError(f"{self.path}: no box task {task_id}")
        return self._task(rows[0])

    def mark_submitted(self, task_ids: Sequence[int], backend: str) -> None:
        """Record that open tasks went to an annotator backend."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE box_tasks SET status='submitted', backend=? WHERE id=? AND status='open'",
                [(backend, t) for t in task_ids],
            )

    def answer_task(
        self, task_id: int, answer: BoxSet, edits: dict, annotator: str, seconds: float, dollars: float
    ) -> None:
        """Record a human's boxes for a task; PoolError if the task is already answered."""
        cursor = self._db.execute(
            "UPDATE box_tasks SET status='done', answer=?, edits=?, annotator=?, seconds=?, dollars=?, done=?, "
            "error=NULL, lease_session=NULL, lease_until=NULL WHERE id=? AND status IN ('open', 'submitted')",
            (_rows(answer, False), json.dumps(edits), annotator, float(seconds), float(dollars), time.time(), task_id),
        )
        if cursor.rowcount != 1:
            raise PoolError(f"{self.path}: box task {task_id} is not open (already answered or unknown)")

    def fail_task(self, task_id: int, error: str) -> None:
        """Mark a task failed with the reason."""
        self._db.execute(
            "UPDATE box_tasks SET status='failed', error=?, done=? WHERE id=?", (error, time.time(), task_id)
        )

    def unapplied(self, round: int) -> list[BoxTask]:
        """Return the round's finished tasks whose outcome the loop has not applied yet."""
        rows = self._query(
            "SELECT * FROM box_tasks WHERE round=? AND status IN ('done', 'failed') AND applied=0 ORDER BY id", (round,)
        )
        return [self._task(r) for r in rows]

    def mark_applied(self, task_ids: Iterable[int]) -> None:
        """Record that the loop applied these tasks' outcomes."""
        self._db.executemany("UPDATE box_tasks SET applied=1 WHERE id=?", [(i,) for i in task_ids])

    # ------------------------------------------------------------------ leases (review page)
    def lease(self, session: str, purposes: Sequence[str], now: float, lease_s: float) -> Optional[BoxTask]:
        """Give ``session`` the oldest waiting task no other live lease holds (its own first); None if none."""
        marks = ",".join("?" * len(purposes))
        with self.transaction() as db:
            own = db.execute(
                f"SELECT id FROM box_tasks WHERE status IN ('open', 'submitted') AND purpose IN ({marks}) "
                f"AND lease_session=? AND lease_until>? ORDER BY id LIMIT 1",
                (*purposes, session, now),
            ).fetchone()
            row = (
                own
                or db.execute(
                    f"SELECT id FROM box_tasks WHERE status IN ('open', 'submitted') AND purpose IN ({marks}) "
                    f"AND (lease_session IS NULL OR lease_until<=?) ORDER BY skips, id LIMIT 1",
                    (*purposes, now),
                ).fetchone()
            )
            if row is None:
                return None
            db.execute(
                "UPDATE box_tasks SET lease_session=?, lease_until=? WHERE id=?", (session, now + lease_s, row[0])
            )
        return self.task(int(row[0]))

    def holds(self, session: str, task_id: int, now: float) -> bool:
        """Return whether ``session`` holds a live lease on the task."""
        rows = self._query(
            "SELECT 1 FROM box_tasks WHERE id=? AND lease_session=? AND lease_until>?", (task_id, session, now)
        )
        return bool(rows)

    def release(self, session: str, task_id: int, skipped: bool = False) -> None:
        """Give a leased task back; a skipped one queues behind the tasks nobody skipped yet."""
        self._db.execute(
            "UPDATE box_tasks SET lease_session=NULL, lease_until=NULL, skips=skips+? WHERE id=? AND lease_session=?",
            (int(skipped), task_id, session),
        )
