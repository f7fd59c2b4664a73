"""What the model manager remembers across restarts, in the model store's ``state.json``.

Three things: the outcome of every job applied (by job id, the last ``jobs_kept``: a job delivered
again after a restart is answered from here, not applied twice), each role's serving history (the
rollback targets, and what pruning must keep) and the versions serving when it was saved (what a
restart loads: ``fleetloop_core.model_manager.serving_package_dirs``).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from fleetloop_core.inference import TierModel
from fleetloop_core.model_store import ModelStore

HistoryEntry = dict[str, str]  # {"name": ..., "version": ...}


class DeliveryState:
    """Job outcomes and serving history of one robot, saved to its model store (thread-safe)."""

    def __init__(self, store: ModelStore, history_kept: int):
        self._store = store
        self._history_kept = history_kept  # entries per role
        self._lock = threading.Lock()  # jobs and history
        self._save_lock = threading.Lock()  # one writer of state.json
        state = store.load_state()
        self._jobs: dict[str, dict[str, Any]] = dict(state.get("jobs", {}))
        self._history: dict[str, list[HistoryEntry]] = {k: list(v) for k, v in state.get("history", {}).items()}

    def outcome(self, job_id: str) -> Optional[dict[str, Any]]:
        """Return the stored outcome of ``job_id`` (``JobOutcome.to_dict``), or None when it was never applied."""
        with self._lock:
            return self._jobs.get(job_id)

    def record_outcome(self, job_id: str, outcome: dict[str, Any]) -> None:
        """Remember the outcome of ``job_id`` (saved with the next :meth:`save`)."""
        with self._lock:
            self._jobs[job_id] = outcome

    def remember_serving(self, role: str, model: TierModel) -> None:
        """Add ``model`` to the end of ``role``'s history (once), dropping the oldest beyond what is kept."""
        entry = {"name": model.manifest.name, "version": model.version}
        with self._lock:
            history = self._history.setdefault(role, [])
            if not history or history[-1] != entry:
                history.append(entry)
            del history[: -self._history_kept]

    def earlier(self, role: str, current_version: str | None) -> list[HistoryEntry]:
        """Return ``role``'s history without the version serving now, oldest first (the rollback targets)."""
        with self._lock:
            return [dict(e) for e in self._history.get(role, []) if e["version"] != current_version]

    def forget(self, role: str, entry: HistoryEntry) -> None:
        """Drop ``entry`` from ``role``'s history (it is serving again and will be appended anew)."""
        with self._lock:
            self._history[role] = [e for e in self._history.get(role, []) if e != entry]

    def protected(self) -> set[tuple[str, str]]:
        """Return the (name, version) pairs pruning must keep: serving and the rollback targets."""
        with self._lock:
            return {(e["name"], e["version"]) for history in self._history.values() for e in history[-2:]}

    def save(self, serving: dict[str, HistoryEntry], jobs_kept: int) -> None:
        """Write ``serving`` ({role: name and version}), the history and the last ``jobs_kept`` outcomes."""
        with self._lock:
            self._jobs = dict(list(self._jobs.items())[-jobs_kept:])
            state = {
                "serving": serving,
                "history": {role: [dict(e) for e in entries] for role, entries in self._history.items()},
                "jobs": dict(self._jobs),
            }
        with self._save_lock:
            self._store.save_state(state)


__all__ = ["DeliveryState", "HistoryEntry"]
