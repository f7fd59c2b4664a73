"""Job executions in SQLite: what our IoT Jobs service answers from, and what a rollout writes.

One row per (thing, job): the job document, the IoT Jobs status, ``versionNumber``,
``executionNumber``, the times AWS stamps (epoch seconds) and ``statusDetails``. Every change is a
transaction (``BEGIN IMMEDIATE``; WAL, ``synchronous=FULL`` for a file), so two processes can share a
store: ``fleetloop-cloud jobs serve --store PATH`` (the standing MQTT service robots talk to) and
``fleetloop-cloud deploy rollout --backend jobs://PATH`` (creates jobs, reads their executions,
cancels them). Executions survive restarts of either. ``:memory:`` (the default) keeps them in the
process, for a service that lives inside one rollout.

Built on the standard library's ``sqlite3``; the service notices another process's writes through
``PRAGMA data_version``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.errors import FleetLoopError

PENDING = ("IN_PROGRESS", "QUEUED")


class JobStoreError(FleetLoopError):
    """The job store refused an operation (message names the store, job and thing)."""


@dataclass
class Execution:
    """One thing's execution of one job, as the IoT Jobs service keeps it."""

    job_id: str
    thing: str
    document: dict[str, Any]
    order: int = 0
    status: str = "QUEUED"
    version_number: int = 1
    execution_number: int = 1
    queued_at: int = field(default_factory=iot_jobs.now_s)
    started_at: Optional[int] = None
    last_updated_at: int = field(default_factory=iot_jobs.now_s)
    details: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in iot_jobs.TERMINAL

    def data(self) -> dict[str, Any]:
        """Return the JobExecution object of the MQTT API."""
        return iot_jobs.execution_data(
            self.thing,
            self.job_id,
            self.document,
            self.status,
            self.version_number,
            self.execution_number,
            self.queued_at,
            self.started_at,
            self.last_updated_at,
            self.details,
        )

    def state(self) -> dict[str, Any]:
        """Return the JobExecutionState object of the MQTT API."""
        return {"status": self.status, "statusDetails": dict(self.details), "versionNumber": self.version_number}


_COLUMNS = (
    "job_id",
    "thing",
    "document",
    "ord",
    "status",
    "version_number",
    "execution_number",
    "queued_at",
    "started_at",
    "last_updated_at",
    "details",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    job_id TEXT NOT NULL, thing TEXT NOT NULL, document TEXT NOT NULL, ord INTEGER NOT NULL,
    status TEXT NOT NULL, version_number INTEGER NOT NULL, execution_number INTEGER NOT NULL,
    queued_at INTEGER NOT NULL, started_at INTEGER, last_updated_at INTEGER NOT NULL, details TEXT NOT NULL,
    PRIMARY KEY (thing, job_id));
CREATE INDEX IF NOT EXISTS executions_job ON executions (job_id);
"""


class JobStore:
    """Executions in one SQLite database (a file shared by processes, or ``:memory:``)."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JobStoreError(f"job store {self.path}: cannot open ({exc})") from None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"JobStore({self.path!r})"

    @contextmanager
    def transaction(self) -> Iterator["JobStore"]:
        """Run the block as one write transaction (other writers wait)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _execution(row: Sequence[Any]) -> Execution:
        values = dict(zip(_COLUMNS, row))
        return Execution(
            job_id=values["job_id"],
            thing=values["thing"],
            document=json.loads(values["document"]),
            order=values["ord"],
            status=values["status"],
            version_number=values["version_number"],
            execution_number=values["execution_number"],
            queued_at=values["queued_at"],
            started_at=values["started_at"],
            last_updated_at=values["last_updated_at"],
            details=json.loads(values["details"]),
        )

    def _select(self, where: str, parameters: Sequence[Any] = ()) -> list[Execution]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM executions {where}", parameters).fetchall()
        return [self._execution(row) for row in rows]

    # ------------------------------------------------------------------ reads
    def get(self, thing: str, job_id: str) -> Optional[Execution]:
        found = self._select("WHERE thing = ? AND job_id = ?", (thing, job_id))
        return found[0] if found else None

    def next_pending(self, thing: str) -> Optional[Execution]:
        """Return the execution a device gets next: IN_PROGRESS first, then the oldest QUEUED (released)."""
        found = self._select(
            "WHERE thing = ? AND status IN ('IN_PROGRESS', 'QUEUED') AND queued_at <= ? "
            "ORDER BY status != 'IN_PROGRESS', queued_at, ord LIMIT 1",
            (thing, iot_jobs.now_s()),
        )
        return found[0] if found else None

    def pending(self, thing: str) -> list[Execution]:
        """Return the thing's pending executions (those a staged rollout has released)."""
        return self._select(
            "WHERE thing = ? AND status IN ('IN_PROGRESS', 'QUEUED') AND queued_at <= ? ORDER BY queued_at, ord",
            (thing, iot_jobs.now_s()),
        )

    def of_job(self, job_id: str) -> list[Execution]:
        return self._select("WHERE job_id = ? ORDER BY thing", (job_id,))

    def things_with_pending(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT thing FROM executions WHERE status IN ('IN_PROGRESS', 'QUEUED') AND queued_at <= ? "
                "ORDER BY thing",
                (iot_jobs.now_s(),),
            ).fetchall()
        return [row[0] for row in rows]

    def released_between(self, after: int, until: int) -> list[str]:
        """Return the things whose QUEUED executions a staged rollout released in ``(after, until]``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT thing FROM executions WHERE status = 'QUEUED' AND queued_at > ? AND queued_at <= ? "
                "ORDER BY thing",
                (after, until),
            ).fetchall()
        return [row[0] for row in rows]

    def data_version(self) -> int:
        """Return SQLite's data_version: it changes when another connection commits."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # ------------------------------------------------------------------ writes
    def put(self, execution: Execution) -> None:
        """Write ``execution`` (inside :meth:`transaction`, or as its own transaction)."""
        values = (
            execution.job_id,
            execution.thing,
            json.dumps(execution.document, sort_keys=True),
            execution.order,
            execution.status,
            execution.version_number,
            execution.execution_number,
            execution.queued_at,
            execution.started_at,
            execution.last_updated_at,
            json.dumps(execution.details, sort_keys=True),
        )
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO executions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )

    def create_job(
        self, job_id: str, things: Sequence[str], document: dict[str, Any], per_minute: Optional[int] = None
    ) -> list[Execution]:
        """Queue one execution of ``job_id`` per thing; JobStoreError when the job exists already.

        ``per_minute`` (IoT ``jobExecutionsRolloutConfig.maximumPerMinute``): a staged rollout; the i-th
        thing's execution is released (queued, seen by the device) ``i * 60 / per_minute`` seconds after
        the first, in whole seconds, so a cancel still reaches the things not released yet.
        """
        with self.transaction():
            if self._db.execute("SELECT 1 FROM executions WHERE job_id = ? LIMIT 1", (job_id,)).fetchone():
                raise JobStoreError(f"job store {self.path}: job {job_id} exists already")
            order = int(self._db.execute("SELECT COALESCE(MAX(ord), 0) FROM executions").fetchone()[0])
            created, now = [], iot_jobs.now_s()
            for offset, thing in enumerate(things, start=1):
                iot_jobs.jobs_topic(thing, "x")  # a thing name the topics can carry
                released = now + ((offset - 1) * 60) // per_minute if per_minute else now
                created.append(
                    Execution(job_id, thing, document, order=order + offset, queued_at=released, last_updated_at=now)
                )
                self.put(created[-1])
        return created

    def cancel_job(self, job_id: str, reason: str) -> list[str]:
        """Cancel the QUEUED executions of ``job_id`` (IN_PROGRESS ones finish); return their things."""
        touched = []
        with self.transaction():
            for execution in self.of_job(job_id):
                if execution.status == "QUEUED":
                    execution.status = "CANCELED"
                    execution.details = {"reason": reason[: iot_jobs.STATUS_DETAIL_VALUE_MAX] or "canceled"}
                    execution.version_number += 1
                    execution.last_updated_at = iot_jobs.now_s()
                    self.put(execution)
                    touched.append(execution.thing)
        return touched

    def close(self) -> None:
        with self._lock:
            self._db.close()
