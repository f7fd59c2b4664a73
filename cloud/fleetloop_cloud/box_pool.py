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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fleetloop_cloud.box_consensus import BoxSet
from fleetloop_cloud.pool import Pool
from fleetloop_cloud.pool_labels import LabelKind, LabelStore, Payload
from fleetloop_cloud.pool_sql import ROW_LOCK


_SCHEMA = """
CREATE TABLE IF NOT EXISTS box_predictions (
    frame_id TEXT NOT NULL, tier TEXT NOT NULL, version TEXT NOT NULL, rows TEXT NOT NULL, class_scores TEXT,
    PRIMARY KEY (frame_id, tier, version));
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


def _stored_rows(boxes: BoxSet) -> str:
    return json.dumps(boxes.rows(False))


def _stored_set(text: str) -> BoxSet:
    return BoxSet.from_rows(json.loads(text), False)


def _edits(text: Optional[str]) -> Optional[dict]:
    return json.loads(text) if text else None


BOX_LABELS = LabelKind(
    "box_",
    Payload("rows", "TEXT NOT NULL", "TEXT", _stored_rows, _stored_set, withdrawn=None),
    BoxLabel,
    BoxTask,
    task_columns={"shown": bool, "edits": _edits},
)


class BoxPool(LabelStore):
    """Box predictions, labels and tasks in the pool's SQLite file.

    Given a :class:`~fleetloop_cloud.pool.Pool`, it shares that pool's connection, so one
    ``pool.transaction()`` covers frame states and box labels together; given a path (the review
    page, another process), it opens its own connection (WAL).
    """

    _kind = BOX_LABELS

    def __init__(self, target: Pool | str | Path):
        self._open(target, _SCHEMA, "the box tables", check_same_thread=False)

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
        return self._missing_in("box_predictions", tier, version, frame_ids)

    def predictions(self, tier: str, version: str, frame_ids: Sequence[str]) -> list[BoxSet]:
        """Return the boxes of one tier version, in the order of ``frame_ids``; PoolError if any is missing."""
        found = self._stored_for("box_predictions", "rows, class_scores", tier, version, frame_ids, "boxes")
        out = []
        for frame_id in frame_ids:
            row = found[frame_id]
            boxes = BoxSet.from_rows(json.loads(row[1]), True)
            if row[2] is not None and len(boxes):
                scores = np.asarray(json.loads(row[2]), np.float32).reshape(len(boxes), -1)
                boxes = BoxSet(boxes.boxes, boxes.scores, boxes.classes, scores)
            out.append(boxes)
        return out

    # ------------------------------------------------------------------ tasks
    def add_tasks(
        self, round: int, purpose: str, items: Sequence[tuple[str, Optional[BoxSet]]], shown: bool = True
    ) -> list[int]:
        """Create open box tasks (frame id, suggestion or None, shown or not); return their ids."""
        return self._insert_tasks(round, purpose, items, {"shown": int(shown)})

    def answer_task(
        self, task_id: int, answer: BoxSet, edits: dict, annotator: str, seconds: float, dollars: float
    ) -> None:
        """Record a human's boxes for a task (its lease ends); PoolError if the task is already answered."""
        self._record_answer(
            task_id,
            answer,
            {
                "edits": json.dumps(edits),
                "annotator": annotator,
                "seconds": float(seconds),
                "dollars": float(dollars),
                "lease_session": None,
                "lease_until": None,
            },
        )

    # ------------------------------------------------------------------ leases (review page)
    def lease(self, session: str, purposes: Sequence[str], now: float, lease_s: float) -> Optional[BoxTask]:
        """Give ``session`` the oldest waiting task no other live lease holds (its own first); None if none.

        Row-locked (``pool_sql.ROW_LOCK``): on PostgreSQL two reviewers lease two different tasks at once.
        """
        marks = ",".join("?" * len(purposes))
        with self.transaction(row_locks=True) as db:
            own = db.execute(
                f"SELECT id FROM box_tasks WHERE status IN ('open', 'submitted') AND purpose IN ({marks}) "
                f"AND lease_session=? AND lease_until>? ORDER BY id LIMIT 1{ROW_LOCK}",
                (*purposes, session, now),
            ).fetchone()
            row = (
                own
                or db.execute(
                    f"SELECT id FROM box_tasks WHERE status IN ('open', 'submitted') AND purpose IN ({marks}) "
                    f"AND (lease_session IS NULL OR lease_until<=?) ORDER BY skips, id LIMIT 1{ROW_LOCK}",
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
