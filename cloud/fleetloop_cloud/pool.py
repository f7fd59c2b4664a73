"""The pool: SQLite (WAL) record of every uploaded frame and of what happened to it.

The pool is the source of truth for each frame's state::

    new -> auto_labeled -> accepted (auto or propagated label) | in_review -> labeled -> used
                                                               (human label)      (in model version X)
    duplicate   a near-duplicate of a frame another robot uploaded (never labeled twice)

Besides frames it holds the teachers' predictions per model version, the labels (with an
append-only history, so nothing accepted is ever silently lost), human tasks and their answers,
quarantined objects with the reason, and per-round step status (what makes every step
idempotent and resumable). Simulated ground truth sits in its own column (``sim_label``): only the
simulated annotator and the simulation-only report figures read it, never a model.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from fleetloop_cloud.pool_db import PoolError, as_list, where_clause
from fleetloop_cloud.pool_labels import LabelKind, LabelStore, Payload
from fleetloop_cloud.pool_rounds import RoundLog

STATES = ("new", "auto_labeled", "accepted", "in_review", "labeled", "used", "duplicate")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id TEXT PRIMARY KEY, robot_id TEXT NOT NULL, stream TEXT NOT NULL, site TEXT NOT NULL,
    stamp_ns INTEGER NOT NULL, frame_key TEXT NOT NULL, sidecar_key TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL, height INTEGER NOT NULL, random INTEGER NOT NULL DEFAULT 0,
    track_hint TEXT, robot_embedding BLOB, phash INTEGER, sim_label INTEGER, sidecar TEXT NOT NULL,
    state TEXT NOT NULL, duplicate_of TEXT, round INTEGER NOT NULL, holdout INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS frames_state ON frames(state);
CREATE INDEX IF NOT EXISTS frames_round ON frames(round);
CREATE TABLE IF NOT EXISTS sightings (frame_id TEXT NOT NULL, robot_id TEXT NOT NULL, key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS quarantine (key TEXT PRIMARY KEY, reason TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orphans (key TEXT PRIMARY KEY, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    frame_id TEXT NOT NULL, tier TEXT NOT NULL, version TEXT NOT NULL, probs BLOB NOT NULL, embedding BLOB,
    PRIMARY KEY (frame_id, tier, version));
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, round INTEGER NOT NULL, purpose TEXT NOT NULL,
    suggestion INTEGER, status TEXT NOT NULL, backend TEXT, external_id TEXT, answer INTEGER,
    annotator TEXT, seconds REAL, dollars REAL, error TEXT, created REAL NOT NULL, done REAL,
    applied INTEGER NOT NULL DEFAULT 0, alternative INTEGER);
CREATE INDEX IF NOT EXISTS tasks_round ON tasks(round, status);
CREATE TABLE IF NOT EXISTS usage (frame_id TEXT NOT NULL, model_version TEXT NOT NULL,
    PRIMARY KEY (frame_id, model_version));
CREATE TABLE IF NOT EXISTS rounds (id INTEGER PRIMARY KEY, status TEXT NOT NULL, started REAL NOT NULL,
    finished REAL, summary TEXT);
CREATE TABLE IF NOT EXISTS steps (round INTEGER NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL,
    info TEXT, started REAL, finished REAL, PRIMARY KEY (round, step));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class FrameRecord:
    """One ingested frame (what ingest writes; ``id`` is the frame's sha256)."""

    id: str
    robot_id: str
    stream: str
    site: str
    stamp_ns: int
    frame_key: str
    sidecar_key: str
    width: int
    height: int
    random: bool
    track_hint: Optional[str]
    robot_embedding: Optional[np.ndarray]
    phash: Optional[int]
    sim_label: Optional[int]
    sidecar: str
    state: str = "new"
    duplicate_of: Optional[str] = None
    round: int = 0
    holdout: bool = False


@dataclass(frozen=True)
class Task:
    """A human task: label (or verify the suggestion of) one frame."""

    id: int
    frame_id: str
    round: int
    purpose: str
    suggestion: Optional[int]
    status: str  # open | submitted | done | failed
    backend: Optional[str]
    external_id: Optional[str]
    answer: Optional[int]
    annotator: Optional[str]
    seconds: Optional[float]
    dollars: Optional[float]
    error: Optional[str]
    alternative: Optional[int] = None  # the class shown beside the suggestion (the teachers' next likeliest)


@dataclass(frozen=True)
class Label:
    """The current label of a frame and where it came from."""

    frame_id: str
    label: int
    source: str
    round: int
    confidence: Optional[float]


def _blob(array: Optional[np.ndarray], dtype=np.float32) -> Optional[bytes]:
    return None if array is None else np.ascontiguousarray(array, dtype=dtype).tobytes()


def _array(blob: Optional[bytes], dtype=np.float32) -> Optional[np.ndarray]:
    return None if blob is None else np.frombuffer(blob, dtype=dtype)


def _signed64(value: Optional[int]) -> Optional[int]:
    # SQLite integers are signed 64-bit; a pHash uses all 64 bits
    if value is None:
        return None
    return value - (1 << 64) if value >= (1 << 63) else value


CLASS_LABELS = LabelKind("", Payload("label", "INTEGER NOT NULL", "INTEGER NOT NULL", int, int, -1), Label, Task)


class Pool(LabelStore, RoundLog):
    """The frame pool in one SQLite file (WAL: readers never block the writer)."""

    _kind = CLASS_LABELS

    def __init__(self, path: str | Path):
        self._open(path, _SCHEMA, "the pool", check_same_thread=True)

    # ------------------------------------------------------------------ frames
    def add_frame(self, record: FrameRecord) -> bool:
        """Insert a frame; return False when its sha256 is already in the pool."""
        if record.state not in STATES:
            raise PoolError(f"{self.path}: unknown frame state {record.state!r} (known: {', '.join(STATES)})")
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO frames (id, robot_id, stream, site, stamp_ns, frame_key, sidecar_key, width, "
            "height, random, track_hint, robot_embedding, phash, sim_label, sidecar, state, duplicate_of, round, "
            "holdout, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.id,
                record.robot_id,
                record.stream,
                record.site,
                record.stamp_ns,
                record.frame_key,
                record.sidecar_key,
                record.width,
                record.height,
                int(record.random),
                record.track_hint,
                _blob(record.robot_embedding),
                _signed64(record.phash),
                record.sim_label,
                record.sidecar,
                record.state,
                record.duplicate_of,
                record.round,
                int(record.holdout),
                time.time(),
            ),
        )
        return cursor.rowcount == 1

    def add_sighting(self, frame_id: str, robot_id: str, key: str) -> None:
        """Record that ``robot_id`` uploaded ``frame_id`` under ``key`` (exact duplicates across robots)."""
        self._db.execute(
            "INSERT OR IGNORE INTO sightings (frame_id, robot_id, key) VALUES (?,?,?)", (frame_id, robot_id, key)
        )

    def known_sidecar_keys(self) -> set[str]:
        """Return every sidecar key already ingested (as a frame or a sighting)."""
        keys = {row[0] for row in self._query("SELECT sidecar_key FROM frames")}
        keys |= {row[0] for row in self._query("SELECT key FROM sightings")}
        return keys

    def knows_sidecar(self, key: str) -> bool:
        """Return whether this sidecar key was ingested already (as a frame or a sighting)."""
        return bool(self._query("SELECT 1 FROM frames WHERE sidecar_key=?", (key,))) or bool(
            self._query("SELECT 1 FROM sightings WHERE key=?", (key,))
        )

    def has_frame(self, frame_id: str) -> bool:
        """Return whether a frame with this sha256 is in the pool."""
        return bool(self._query("SELECT 1 FROM frames WHERE id=?", (frame_id,)))

    def frames(
        self,
        state: str | Sequence[str] | None = None,
        round: int | None = None,
        ids: Iterable[str] | None = None,
        include_duplicates: bool = False,
    ) -> list[sqlite3.Row]:
        """Return frame rows, ordered by robot, stream and stamp."""
        states = as_list(state)
        where, params = where_clause({"round": round}, {"state": states})
        if not include_duplicates and not (states and "duplicate" in states):
            where += (" AND " if where else " WHERE ") + "state != 'duplicate'"
        rows = self._query(f"SELECT * FROM frames{where} ORDER BY robot_id, stream, stamp_ns", params)
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["id"] in wanted]
        return rows

    def frames_without_truth(self) -> list[sqlite3.Row]:
        """Return (id, robot_id, stamp_ns) of frames whose sidecar carried no simulated ground truth."""
        return self._query(
            "SELECT id, robot_id, stamp_ns FROM frames WHERE sim_label IS NULL ORDER BY robot_id, stamp_ns"
        )

    def set_sim_labels(self, labels: dict[str, int]) -> int:
        """Record simulated ground truth for frames that came without it (a simulation's oracle
        supplies it, e.g. for robots whose camera messages cannot carry it); return rows updated.

        Like the ``simulation`` block of a sidecar, this is read only by the simulated annotator and
        the simulation-only report figures, never by a model.
        """
        with self.transaction() as db:
            return sum(
                db.execute(
                    "UPDATE frames SET sim_label=? WHERE id=? AND sim_label IS NULL", (int(label), frame_id)
                ).rowcount
                for frame_id, label in labels.items()
            )

    def frame(self, frame_id: str) -> sqlite3.Row:
        """Return one frame row; PoolError if absent."""
        rows = self._query("SELECT * FROM frames WHERE id=?", (frame_id,))
        if not rows:
            raise PoolError(f"{self.path}: no frame {frame_id}")
        return rows[0]

    def set_state(self, frame_ids: Iterable[str], state: str) -> None:
        """Set the state of frames."""
        if state not in STATES:
            raise PoolError(f"{self.path}: unknown frame state {state!r} (known: {', '.join(STATES)})")
        self._db.executemany("UPDATE frames SET state=? WHERE id=?", [(state, i) for i in frame_ids])

    def set_holdout(self, frame_ids: Iterable[str]) -> None:
        """Mark frames as held out of training (the holdout test set)."""
        self._db.executemany("UPDATE frames SET holdout=1 WHERE id=?", [(i,) for i in frame_ids])

    def phashes(self, since: float | None = None) -> list[tuple[str, str, int, float]]:
        """Return (frame id, robot id, pHash as unsigned 64-bit, created) of every non-duplicate frame
        (added at ``since`` or later: what other ingest workers added meanwhile)."""
        sql = "SELECT id, robot_id, phash, created FROM frames WHERE phash IS NOT NULL AND state != 'duplicate'"
        rows = self._query(sql + " AND created >= ?", (since,)) if since is not None else self._query(sql)
        return [(r[0], r[1], r[2] & ((1 << 64) - 1), float(r[3])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Return the number of frames per state."""
        return {row[0]: row[1] for row in self._query("SELECT state, COUNT(*) FROM frames GROUP BY state")}

    # ------------------------------------------------------------------ quarantine and orphans
    def quarantine(self, key: str, reason: str) -> None:
        """Quarantine an object with the reason (kept; never silently dropped)."""
        self._db.execute(
            "INSERT OR REPLACE INTO quarantine (key, reason, created) VALUES (?,?,?)", (key, reason, time.time())
        )
        self._db.execute("DELETE FROM orphans WHERE key=?", (key,))

    def quarantined(self) -> dict[str, str]:
        """Return quarantined keys and their reasons."""
        return {row[0]: row[1] for row in self._query("SELECT key, reason FROM quarantine ORDER BY key")}

    def release_quarantine(self, key: str) -> None:
        """Let ingest look at a quarantined key again (after it was fixed)."""
        self._db.execute("DELETE FROM quarantine WHERE key=?", (key,))

    def orphan_first_seen(self, key: str, now: float) -> float:
        """Return when a frame without sidecar was first seen (recording ``now`` the first time)."""
        self._db.execute("INSERT OR IGNORE INTO orphans (key, first_seen) VALUES (?,?)", (key, now))
        return float(self._query("SELECT first_seen FROM orphans WHERE key=?", (key,))[0][0])

    def forget_orphan(self, key: str) -> None:
        """Drop the waiting record of a frame whose sidecar arrived."""
        self._db.execute("DELETE FROM orphans WHERE key=?", (key,))

    def orphans(self) -> dict[str, float]:
        """Return frames waiting for their sidecar and when each was first seen (epoch seconds)."""
        return {row[0]: row[1] for row in self._query("SELECT key, first_seen FROM orphans ORDER BY key")}

    # ------------------------------------------------------------------ predictions
    def put_predictions(
        self, tier: str, version: str, frame_ids: Sequence[str], probs: np.ndarray, embeddings: Optional[np.ndarray]
    ) -> None:
        """Store a teacher's probabilities (N, C) and embeddings (N, D) for frames."""
        rows = []
        for i, frame_id in enumerate(frame_ids):
            emb = None if embeddings is None else _blob(embeddings[i], np.float16)
            rows.append((frame_id, tier, version, _blob(probs[i]), emb))
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO predictions (frame_id, tier, version, probs, embedding) VALUES (?,?,?,?,?)",
                rows,
            )

    def missing_predictions(self, tier: str, version: str, frame_ids: Sequence[str]) -> list[str]:
        """Return the frames that have no prediction of this tier version yet."""
        return self._missing_in("predictions", tier, version, frame_ids)

    def predictions(self, tier: str, version: str, frame_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (probs (N, C), embeddings (N, D) or None) in the order of ``frame_ids``."""
        rows = self._stored_for("predictions", "probs, embedding", tier, version, frame_ids, "prediction")
        if not frame_ids:
            return np.zeros((0, 0), np.float32), None
        probs = np.stack([_array(rows[f][1]) for f in frame_ids])
        embeddings = None
        if all(rows[f][2] is not None for f in frame_ids):
            embeddings = np.stack([_array(rows[f][2], np.float16).astype(np.float32) for f in frame_ids])
        return probs, embeddings

    # ------------------------------------------------------------------ tasks
    def add_tasks(
        self,
        round: int,
        purpose: str,
        items: Sequence[tuple[str, Optional[int]]],
        alternatives: Sequence[Optional[int]] | None = None,
    ) -> list[int]:
        """Create open human tasks (frame id, suggested label or None), each with the class shown beside the
        suggestion (``alternatives``, None: none); return their ids."""
        if alternatives is None:
            return self._insert_tasks(round, purpose, items, {})
        return self._insert_tasks(round, purpose, items, [{"alternative": a} for a in alternatives])

    def answer_task(self, task_id: int, answer: int, annotator: str, seconds: float, dollars: float) -> None:
        """Record a human answer (a class index); PoolError if the task is already done."""
        self._record_answer(
            task_id, answer, {"annotator": annotator, "seconds": float(seconds), "dollars": float(dollars)}
        )

    # ------------------------------------------------------------------ usage
    def record_usage(self, frame_ids: Iterable[str], model_version: str) -> None:
        """Record that frames were used to train ``model_version``; their state becomes 'used'."""
        ids = list(frame_ids)
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO usage (frame_id, model_version) VALUES (?,?)", [(i, model_version) for i in ids]
            )
            db.executemany(
                "UPDATE frames SET state='used' WHERE id=? AND state IN ('accepted', 'labeled')", [(i,) for i in ids]
            )

    def usage(self, frame_id: str) -> list[str]:
        """Return the model versions a frame was used to train."""
        return [
            r[0]
            for r in self._query("SELECT model_version FROM usage WHERE frame_id=? ORDER BY model_version", (frame_id,))
        ]
