"""Rounds, their steps and small stored values in the pool (what makes every step resumable)."""

from __future__ import annotations

import json
import time
from typing import Optional

from fleetloop_cloud.pool_db import PoolTables


class RoundLog(PoolTables):
    """The pool's rounds (open / finished, with summary), per-round step status and key-values."""

    def current_round(self) -> Optional[int]:
        """Return the open round, or None."""
        rows = self._query("SELECT id FROM rounds WHERE status='open' ORDER BY id DESC LIMIT 1")
        return int(rows[0][0]) if rows else None

    def last_round(self) -> int:
        """Return the highest round number (0 when none)."""
        rows = self._query("SELECT MAX(id) FROM rounds")
        return int(rows[0][0] or 0)

    def open_round(self) -> int:
        """Return the open round, opening the next one if none is open (one transaction: two callers open one)."""
        with self.transaction():
            current = self.current_round()
            if current is not None:
                return current
            number = self.last_round() + 1
            self._db.execute("INSERT INTO rounds (id, status, started) VALUES (?, 'open', ?)", (number, time.time()))
            return number

    def finish_round(self, round: int, summary: dict) -> None:
        """Close a round and store its summary."""
        self._db.execute(
            "UPDATE rounds SET status='finished', finished=?, summary=? WHERE id=?",
            (time.time(), json.dumps(summary, sort_keys=True), round),
        )

    def round_summary(self, round: int) -> Optional[dict]:
        """Return a finished round's summary."""
        rows = self._query("SELECT summary FROM rounds WHERE id=?", (round,))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def last_done(self, step: str, before: Optional[int] = None) -> Optional[int]:
        """Return the latest round (before ``before``, if given) whose ``step`` is done, or None."""
        sql, params = "SELECT MAX(round) FROM steps WHERE step=? AND status='done'", [step]
        if before is not None:
            sql, params = sql + " AND round<?", [step, before]
        rows = self._query(sql, params)
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def step(self, round: int, step: str) -> tuple[str, dict]:
        """Return (status, info) of a round's step ('pending' and {} when never started)."""
        rows = self._query("SELECT status, info FROM steps WHERE round=? AND step=?", (round, step))
        if not rows:
            return "pending", {}
        return rows[0][0], json.loads(rows[0][1] or "{}")

    def set_step(self, round: int, step: str, status: str, info: dict | None = None) -> None:
        """Record a step's status (running, waiting, done, failed, skipped) and info."""
        now = time.time()
        self._db.execute(
            "INSERT INTO steps (round, step, status, info, started, finished) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(round, step) DO UPDATE SET status=excluded.status, info=excluded.info, "
            "finished=excluded.finished",
            (
                round,
                step,
                status,
                json.dumps(info or {}, sort_keys=True),
                now,
                now if status in ("done", "failed", "skipped") else None,
            ),
        )

    def get(self, key: str, default: object = None) -> object:
        """Return a stored JSON value."""
        rows = self._query("SELECT value FROM kv WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def put(self, key: str, value: object) -> None:
        """Store a JSON value."""
        self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?,?)", (key, json.dumps(value)))

    def suggestion_sources(self, round: int) -> dict[str, str]:
        """Return {frame: where its review suggestion came from} for the round's frames whose suggestion is
        not the teachers' (``track``: a person's label of another frame of its track)."""
        return dict(self.get(f"suggestion_sources/{round}") or {})  # type: ignore[call-overload]

    def add_suggestion_sources(self, round: int, sources: dict[str, str]) -> None:
        """Record where review suggestions came from (before their tasks exist: a page never shows one unsaid;
        written by the loop's runner alone, which holds the pool's runner lock)."""
        if sources:
            self.put(f"suggestion_sources/{round}", {**self.suggestion_sources(round), **sources})
