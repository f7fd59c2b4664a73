"""Labels and human tasks in the pool, written once for every task kind.

A task kind (classification: a class index; detection: a box list) keeps its current labels, their
append-only history and its human tasks in three tables of the pool's SQLite file. What differs
per kind is a :class:`LabelKind`: the table names, the payload column and how a payload is stored.
:class:`LabelStore` is the label and task bookkeeping over such tables: set / withdraw a label
(history kept), create tasks, mark them submitted, answered, failed or applied.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from fleetloop_cloud.pool_db import PoolError, PoolTables, as_list, where_clause
from fleetloop_cloud.pool_sql import ROW_LOCK

LABEL_SOURCES = ("human", "auto", "propagated")
TASK_PURPOSES = ("calibration", "track", "review", "audit", "second-opinion")


@dataclass(frozen=True)
class Payload:
    """How a task kind stores its label payload (a label, a suggestion, an answer) in the pool."""

    column: str  # the payload column of the labels and label-events tables
    column_type: str  # its SQL type in the labels table
    event_column_type: str  # its SQL type in the label events (where a withdrawal is recorded)
    encode: Callable[[Any], Any]  # payload -> stored value
    decode: Callable[[Any], Any]  # stored value -> payload
    withdrawn: Any  # what the history records when a label is withdrawn


@dataclass(frozen=True)
class LabelKind:
    """Where one task kind keeps its labels and tasks: tables ``<prefix>labels``, ``<prefix>label_events``
    and ``<prefix>tasks``, its payload, and its label and task records."""

    prefix: str  # "" (classification), "box_" (detection)
    payload: Payload
    label: Callable[..., Any]  # (frame_id, payload, source, round, confidence) -> the label record
    task: type  # the task record (a dataclass whose fields are columns of the tasks table)
    task_columns: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)  # column -> field value

    labels: str = field(init=False)  # current label per frame: ``<prefix>labels``
    label_events: str = field(init=False)  # append-only label history: ``<prefix>label_events``
    tasks: str = field(init=False)  # human tasks: ``<prefix>tasks``
    task_noun: str = field(init=False)  # how errors name a task: "task", "box task"

    def __post_init__(self) -> None:
        for table in ("labels", "label_events", "tasks"):
            object.__setattr__(self, table, self.prefix + table)
        object.__setattr__(self, "task_noun", f"{self.prefix.replace('_', ' ')}task")

    def schema(self) -> str:
        """Return the SQL that creates the label tables (the tasks table differs per kind: its own schema)."""
        return (
            f"CREATE TABLE IF NOT EXISTS {self.labels} (frame_id TEXT PRIMARY KEY, {self.payload.column} "
            f"{self.payload.column_type}, source TEXT NOT NULL, round INTEGER NOT NULL, confidence REAL, "
            f"task_id INTEGER, updated REAL NOT NULL);\n"
            f"CREATE TABLE IF NOT EXISTS {self.label_events} (id INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, "
            f"{self.payload.column} {self.payload.event_column_type}, source TEXT NOT NULL, round INTEGER NOT NULL, "
            f"reason TEXT NOT NULL, created REAL NOT NULL);\n"
        )

    def store(self, payload: Any) -> Any:
        """Return the stored value of a payload (None stays None)."""
        return None if payload is None else self.payload.encode(payload)

    def load(self, stored: Any) -> Any:
        """Return the payload of a stored value (None stays None)."""
        return None if stored is None else self.payload.decode(stored)


class LabelStore(PoolTables):
    """Labels (with history) and human tasks of one :class:`LabelKind` in the pool's file."""

    _kind: ClassVar[LabelKind]

    def _open(self, target: "PoolTables | str | Path", schema: str, what: str, check_same_thread: bool) -> None:
        """Open (or share) the connection and create ``schema`` and this kind's label tables."""
        super()._open(target, schema + self._kind.schema(), what, check_same_thread)

    def _task(self, row: sqlite3.Row) -> Any:
        """Return the task record of a row of the tasks table."""
        kind = self._kind
        values = {f.name: row[f.name] for f in fields(kind.task)}
        values["suggestion"], values["answer"] = kind.load(row["suggestion"]), kind.load(row["answer"])
        for column, convert in kind.task_columns.items():
            values[column] = convert(row[column])
        return kind.task(**values)

    # ------------------------------------------------------------------ labels
    def set_label(
        self,
        frame_id: str,
        label: Any,
        source: str,
        round: int,
        reason: str,
        confidence: float | None = None,
        task_id: int | None = None,
    ) -> None:
        """Set a frame's label (history kept in the label events)."""
        if source not in LABEL_SOURCES:
            raise PoolError(f"{self.path}: unknown label source {source!r} (known: {', '.join(LABEL_SOURCES)})")
        kind, now = self._kind, time.time()
        stored = kind.store(label)
        self._db.execute(
            f"INSERT OR REPLACE INTO {kind.labels} (frame_id, {kind.payload.column}, source, round, confidence, "
            "task_id, updated) VALUES (?,?,?,?,?,?,?)",
            (frame_id, stored, source, round, confidence, task_id, now),
        )
        self._record_event(frame_id, stored, source, round, reason, now)

    def _record_event(self, frame_id: str, stored: Any, source: str, round: int, reason: str, now: float) -> None:
        self._db.execute(
            f"INSERT INTO {self._kind.label_events} (frame_id, {self._kind.payload.column}, source, round, reason, "
            "created) VALUES (?,?,?,?,?,?)",
            (frame_id, stored, source, round, reason, now),
        )

    def remove_label(self, frame_id: str, round: int, reason: str) -> None:
        """Withdraw a frame's label (it goes back to review); the history keeps what it was."""
        rows = self._query(f"SELECT source FROM {self._kind.labels} WHERE frame_id=?", (frame_id,))
        if not rows:
            return
        self._db.execute(f"DELETE FROM {self._kind.labels} WHERE frame_id=?", (frame_id,))
        self._record_event(frame_id, self._kind.payload.withdrawn, rows[0][0], round, reason, time.time())

    def labels(self, frame_ids: Iterable[str] | None = None, source: str | None = None) -> dict[str, Any]:
        """Return current labels by frame id."""
        kind = self._kind
        where, params = where_clause({"source": source}, {})
        rows = self._query(
            f"SELECT frame_id, {kind.payload.column}, source, round, confidence FROM {kind.labels}{where}", params
        )
        out = {r[0]: kind.label(r[0], kind.payload.decode(r[1]), r[2], r[3], r[4]) for r in rows}
        if frame_ids is not None:
            wanted = set(frame_ids)
            out = {k: v for k, v in out.items() if k in wanted}
        return out

    def label_events(self, frame_id: str) -> list[sqlite3.Row]:
        """Return the label history of one frame, oldest first."""
        return self._query(f"SELECT * FROM {self._kind.label_events} WHERE frame_id=? ORDER BY id", (frame_id,))

    # ------------------------------------------------------------------ tasks
    def _insert_tasks(
        self,
        round: int,
        purpose: str,
        items: Sequence[tuple[str, Any]],
        extra: dict[str, object] | Sequence[dict[str, object]],
    ) -> list[int]:
        """Create open tasks (frame id, suggestion or None) with ``extra`` columns (one dict for every task, or
        one per task, all with the same columns); return their ids."""
        if purpose not in TASK_PURPOSES:
            raise PoolError(f"{self.path}: unknown task purpose {purpose!r} (known: {', '.join(TASK_PURPOSES)})")
        extras = [extra] * len(items) if isinstance(extra, dict) else list(extra)
        if len(extras) != len(items):
            raise PoolError(f"{self.path}: {len(items)} tasks and {len(extras)} sets of their columns")
        names = list(extras[0]) if extras else []
        columns = "".join(f", {c}" for c in names)
        marks = ",?" * len(names)
        ids, now = [], time.time()
        with self.transaction() as db:
            for (frame_id, suggestion), values in zip(items, extras):
                cursor = db.execute(
                    f"INSERT INTO {self._kind.tasks} (frame_id, round, purpose, suggestion{columns}, status, created) "
                    f"VALUES (?,?,?,?{marks}, 'open', ?)",
                    (frame_id, round, purpose, self._kind.store(suggestion), *(values[n] for n in names), now),
                )
                ids.append(int(cursor.lastrowid))
        return ids

    def tasks(
        self,
        round: int | None = None,
        purpose: str | None = None,
        status: str | Sequence[str] | None = None,
        backend: str | None = None,
    ) -> list[Any]:
        """Return tasks, oldest first."""
        where, params = where_clause(
            {"round": round, "purpose": purpose, "backend": backend}, {"status": as_list(status)}
        )
        rows = self._query(f"SELECT * FROM {self._kind.tasks}{where} ORDER BY id", params)
        return [self._task(r) for r in rows]

    def task(self, task_id: int) -> Any:
        """Return one task; PoolError if absent."""
        rows = self._query(f"SELECT * FROM {self._kind.tasks} WHERE id=?", (task_id,))
        if not rows:
            raise PoolError(f"{self.path}: no {self._kind.task_noun} {task_id}")
        return self._task(rows[0])

    def mark_submitted(
        self, task_ids: Sequence[int], backend: str, external_ids: Sequence[str | None] | None = None
    ) -> None:
        """Record that open tasks went to an annotator backend (with its job / loop ids when it names them)."""
        table = self._kind.tasks
        if external_ids is None:
            sql, rows = f"UPDATE {table} SET status='submitted', backend=?", [(backend, t) for t in task_ids]
        else:
            sql = f"UPDATE {table} SET status='submitted', backend=?, external_id=?"
            rows = [(backend, ext, t) for t, ext in zip(task_ids, external_ids)]
        with self.transaction() as db:
            db.executemany(sql + " WHERE id=? AND status='open'", rows)

    def _record_answer(self, task_id: int, answer: Any, columns: dict[str, object]) -> None:
        """Mark a task done with its answer and ``columns``; PoolError if it is not open."""
        sets = "".join(f", {c}=?" for c in columns)
        cursor = self._db.execute(
            f"UPDATE {self._kind.tasks} SET status='done', answer=?{sets}, done=?, error=NULL "
            "WHERE id=? AND status IN ('open', 'submitted')",
            (self._kind.store(answer), *columns.values(), time.time(), task_id),
        )
        if cursor.rowcount != 1:
            raise PoolError(f"{self.path}: {self._kind.task_noun} {task_id} is not open (already answered or unknown)")

    def fail_task(self, task_id: int, error: str) -> None:
        """Mark a task failed with the reason (its frame stays unlabeled and goes back to review)."""
        self._db.execute(
            f"UPDATE {self._kind.tasks} SET status='failed', error=?, done=? WHERE id=?", (error, time.time(), task_id)
        )

    def unapplied(self, round: int) -> list[Any]:
        """Return the round's finished (done or failed) tasks whose outcome the loop has not applied yet.

        Inside a transaction on PostgreSQL their rows stay locked until it ends, and a row another
        transaction holds (the review page undoing that answer) is passed over: the next collection
        gets it, never an answer undone meanwhile.
        """
        rows = self._query(
            f"SELECT * FROM {self._kind.tasks} WHERE round=? AND status IN ('done', 'failed') AND applied=0 "
            f"ORDER BY id{ROW_LOCK}",
            (round,),
        )
        return [self._task(r) for r in rows]

    def mark_applied(self, task_ids: Iterable[int]) -> None:
        """Record that the loop applied these tasks' outcomes (labels set, frames moved)."""
        self._db.executemany(f"UPDATE {self._kind.tasks} SET applied=1 WHERE id=?", [(i,) for i in task_ids])
