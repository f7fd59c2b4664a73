"""The models serving one cascade, and every change to them: frames in, swaps, the watch, the rollbacks.

The serving thread feeds every frame through :meth:`ServingModels.infer` (or reports it with
:meth:`~ServingModels.observe`): the ring buffer keeps one of every ``ring_stride_frames`` frames for the
shadow check, and a running watch counts the frame and may swap the previous model back at once. The
job thread changes the pair with :meth:`~ServingModels.swap` (a watch starts) and
:meth:`~ServingModels.serve`. All this state (the serving pair, the ring buffer, the watch, the role
states) is guarded by one lock and changed by both threads at once: every transition sits in this file,
so that lock's discipline reads in one place. Each becomes a :class:`ModelEvent` (logged once here,
kept in a bounded list, passed to listeners: the ROS node publishes them).

:class:`ServingModels` is the serving half of ``fleetloop_core.model_manager.ModelManager``; the jobs
(which model, whether it may serve) are that module's and ``fleetloop_core.model_deploy``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from fleetloop_core.cascade import Cascade, FrameResult
from fleetloop_core.contracts.job_document import JobOutcome, Status
from fleetloop_core.delivery_state import DeliveryState, HistoryEntry
from fleetloop_core.errors import InputError
from fleetloop_core.inference import TierModel
from fleetloop_core.model_watch import ROLES, ServedBefore, Watch, start_watch

if TYPE_CHECKING:  # the manager's config: read live (the ROS node replaces it between jobs)
    from fleetloop_core.model_manager import ModelManagerConfig

log = logging.getLogger("fleetloop_core.model_manager")  # where operators look for model transitions

WARNING_EVENTS = ("rejected", "shadow_failed", "rolled_back", "failed")


@dataclass(frozen=True)
class ModelEvent:
    """One transition: stamp (unix seconds), kind, role, versions, job and detail."""

    stamp: float
    kind: str  # job_received, duplicate_job, already_serving, downloading, installed,
    #                           rejected, loaded, shadow_passed, shadow_failed, swapped, watch_passed,
    #                           rolled_back, failed
    role: Optional[str] = None
    version: Optional[str] = None
    previous_version: Optional[str] = None
    job_id: Optional[str] = None
    detail: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ManagerStatus:
    """What the manager is doing: serving versions, per-role state, the watch, the last outcome."""

    serving: dict[str, str]
    state: dict[str, str]
    watching: Optional[dict[str, Any]]
    last_outcome: Optional[dict[str, Any]]
    events: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ServingModels:
    """Owns the serving models of one cascade and every change to them (thread-safe)."""

    def __init__(
        self,
        cascade: Cascade,
        config: ModelManagerConfig,
        state: DeliveryState,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cascade = cascade
        self.config = config
        self._state = state
        self._clock = clock
        self._lock = threading.RLock()  # the serving pair's changes, the ring, the watch, the role states
        self._ring: deque[np.ndarray] = deque(maxlen=config.ring_buffer_frames)
        self._ring_seen = 0
        self._frames_seen = threading.Condition(self._lock)
        self._served_before = ServedBefore(max(config.ring_buffer_frames, 32))
        self._watch: Optional[Watch] = None
        self._role_state: dict[str, str] = {role: "serving" for role in ROLES}
        self._events: deque[ModelEvent] = deque(maxlen=config.events_kept)
        self._listeners: list[Callable[[ModelEvent], None]] = []
        self._last_outcome: Optional[JobOutcome] = None  # set by whoever runs the jobs
        for role in ROLES:
            model = self.model(role)
            if model is not None:
                state.remember_serving(role, model)

    # ------------------------------------------------------------------ events and status
    def add_listener(self, listener: Callable[[ModelEvent], None]) -> None:
        """Call ``listener(event)`` for every future transition."""
        self._listeners.append(listener)

    def emit(
        self,
        kind: str,
        role: str | None = None,
        version: str | None = None,
        previous_version: str | None = None,
        job_id: str | None = None,
        detail: str = "",
        figures: dict[str, float] | None = None,
    ) -> ModelEvent:
        """Record one transition: keep it, log it once, pass it to every listener; return it."""
        event = ModelEvent(time.time(), kind, role, version, previous_version, job_id, detail, dict(figures or {}))
        self._events.append(event)
        level = logging.WARNING if kind in WARNING_EVENTS else logging.INFO
        log.log(
            level,
            "model %s: role=%s version=%s previous=%s job=%s %s",
            kind,
            role,
            version,
            previous_version,
            job_id,
            detail,
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop a swap or a rollback
                log.exception("model event listener failed on %s", kind)
        return event

    def events(self) -> list[ModelEvent]:
        """Return the kept transitions, oldest first."""
        return list(self._events)

    def status(self) -> ManagerStatus:
        """Return what the manager is doing right now."""
        with self._lock:
            watch = self._watch
            watching = None
            if watch is not None and not watch.done.is_set():
                watching = {
                    "job_id": watch.job_id,
                    "role": watch.role,
                    "version": watch.version,
                    "frames": watch.stats.frames,
                    "errors": watch.stats.errors,
                }
            return ManagerStatus(
                serving={role: m.version for role, m in self._serving().items()},
                state=dict(self._role_state),
                watching=watching,
                last_outcome=self._last_outcome.to_dict() if self._last_outcome else None,
                events=len(self._events),
            )

    def model(self, role: str) -> TierModel | None:
        """Return the model serving ``role`` (``edge`` or ``escalation``), or None."""
        return self.cascade.edge if role == "edge" else self.cascade.escalation

    def set_state(self, role: str, state: str) -> None:
        """Say what ``role`` is doing (serving, downloading, warming, shadow, watching), for :meth:`status`."""
        with self._lock:
            self._role_state[role] = state

    def _serving(self) -> dict[str, TierModel]:
        return {role: model for role in ROLES if (model := self.model(role)) is not None}

    def save_state(self) -> None:
        """Save the delivery state with the versions serving now (``state.json``, atomically)."""
        with self._lock:
            serving = {role: {"name": m.manifest.name, "version": m.version} for role, m in self._serving().items()}
        self._state.save(serving, self.config.jobs_kept)

    # ------------------------------------------------------------------ serving path
    def infer(self, frame: np.ndarray, stream: str = "default", color_order: str = "RGB") -> FrameResult:
        """Return the cascade's result for one frame, feeding the ring buffer and the watchdog."""
        try:
            result = self.cascade.infer(frame, stream, color_order)
        except InputError:
            raise  # a bad frame is the caller's problem, not the model's
        except Exception as exc:
            self.observe(frame, None, error=exc)
            raise
        self.observe(frame, result)
        return result

    def observe(self, frame: np.ndarray | None, result: FrameResult | None, error: Exception | None = None) -> None:
        """Record one served frame (or an inference error) for the shadow check and the watchdog."""
        ended = None
        with self._lock:
            if frame is not None:
                if self._ring_seen % self.config.ring_stride_frames == 0:
                    self._ring.append(np.array(frame, copy=True))
                    self._frames_seen.notify_all()
                self._ring_seen += 1
            bad = error is not None or (result is not None and not np.isfinite(result.probs).all())
            if result is not None and not bad:
                for role, model in self._serving().items():
                    self._served_before.record(role, model, result)
            watch = self._watch
            if watch is not None and not watch.done.is_set():
                watch.count(result, bad)
                ended = watch.judge(self.config.watchdog, self._clock())
        # listeners run outside the lock: a slow one must not hold up the job thread
        if ended == "passed" and watch is not None:
            self._finish_watch(watch)
        elif ended == "roll_back" and watch is not None:
            self._roll_back_watch(watch, f"watchdog: {watch.verdict}")

    def buffered_frames(self) -> int:
        """Return how many frames the ring buffer holds."""
        with self._lock:
            return len(self._ring)

    def shadow_frames(self, min_frames: int, wait_s: float) -> list[np.ndarray]:
        """Return the ring buffer's frames, once it holds ``min_frames`` or ``wait_s`` seconds have passed."""
        with self._lock:
            deadline = self._clock() + wait_s
            while len(self._ring) < min_frames and self._clock() < deadline:
                self._frames_seen.wait(timeout=min(0.5, max(0.01, deadline - self._clock())))
            return list(self._ring)

    # ------------------------------------------------------------------ changes to the pair
    def swap(
        self,
        job_id: str,
        role: str,
        candidate: TierModel,
        expected_confidence: float = float("nan"),
        current_shadow_confidence: float = float("nan"),
    ) -> Optional[Watch]:
        """Swap ``candidate`` in between two frames; return the watch started for it (None: no watchdog).

        ``expected_confidence`` / ``current_shadow_confidence``: the candidate's / the serving model's mean
        confidence in the shadow check (``fleetloop_core.model_watch.start_watch`` makes the baselines).
        """
        with self._lock:
            served_before = self._served_before.take(role)
            previous = self.cascade.set_model(role, candidate)  # atomic between two frames
            self._state.remember_serving(role, candidate)
            watch = None
            if previous is not None and self.config.watchdog.enabled:
                watch = start_watch(
                    job_id,
                    role,
                    candidate,
                    previous,
                    served_before,
                    expected_confidence,
                    current_shadow_confidence,
                    self._clock(),
                )
                self._watch = watch
            self._role_state[role] = "watching" if watch is not None else "serving"
        self.emit("swapped", role, candidate.version, previous.version if previous else None, job_id)
        self.save_state()
        return watch

    def serve(self, role: str, model: TierModel, entry: HistoryEntry) -> TierModel | None:
        """Serve ``model``, an earlier version of ``role`` (history ``entry``), at once; return the one replaced."""
        with self._lock:
            previous = self.cascade.set_model(role, model)
            self._state.forget(role, entry)
            self._state.remember_serving(role, model)
            self._role_state[role] = "serving"
        return previous

    def roll_back_watched(self, role: str, reason: str, to_version: str | None = None) -> Optional[Watch]:
        """Swap the previous model of a running watch of ``role`` back (when it is ``to_version``); return the watch."""
        with self._lock:
            watch = self._watch
        if (
            watch is None
            or watch.role != role
            or watch.done.is_set()
            or (to_version is not None and to_version != watch.previous.version)
        ):
            return None
        self._roll_back_watch(watch, reason)
        self.save_state()
        return watch

    def watch_tick(self) -> None:
        """End a watch whose time is up even when no frames arrive (call periodically; ``Watch.time_up``)."""
        with self._lock:
            watch = self._watch
            due = watch is not None and not watch.done.is_set() and watch.time_up(self.config.watchdog, self._clock())
        if due and watch is not None:
            self._finish_watch(watch)

    def end_watch(self) -> None:
        """End a running watch as passed (the manager closes)."""
        with self._lock:
            watch = self._watch
        if watch is not None and not watch.done.is_set():
            self._finish_watch(watch)

    def fail(
        self,
        job_id: str,
        status: Status,
        role: str,
        reason: str,
        details: dict[str, Any] | None = None,
        kind: str = "failed",
    ) -> JobOutcome:
        """End a job without a change: ``role`` serves on as before; return the outcome ``status`` with ``reason``."""
        current = self.model(role)
        self.set_state(role, "serving")
        self.emit(kind, role, current.version if current else None, job_id=job_id, detail=reason)
        return JobOutcome(
            job_id,
            status,
            reason,
            role,
            current.version if current else None,
            {k: str(v) for k, v in (details or {}).items()},
        )

    def _finish_watch(self, watch: Watch) -> None:
        with self._lock:
            if watch.done.is_set() or watch.verdict is not None:
                return
            self._role_state[watch.role] = "serving"
            figures = watch.figures(latency=True)
            judged = watch.judged(self.config.watchdog)
            watch.ended_at = self._clock()
            watch.done.set()
        detail = (
            f"{watch.stats.frames} frames without crossing a limit"
            if judged
            else f"unjudged: {watch.unjudged_reason(self.config.watchdog)}"
        )
        self.emit("watch_passed", watch.role, watch.version, watch.previous.version, watch.job_id, detail, figures)

    def _roll_back_watch(self, watch: Watch, reason: str) -> None:
        with self._lock:
            if watch.done.is_set():
                return
            current = self.model(watch.role)
            if current is not None and current.version == watch.version:
                self.cascade.set_model(watch.role, watch.previous)  # instant: the old session is still warm
                self._state.remember_serving(watch.role, watch.previous)
            watch.rolled_back_at = self._clock()
            watch.verdict = reason
            self._role_state[watch.role] = "serving"
            watch.done.set()
        # no state write here: this may run on the serving thread; the job's thread saves the state
        self.emit(
            "rolled_back", watch.role, watch.previous.version, watch.version, watch.job_id, reason, watch.figures()
        )


__all__ = ["ManagerStatus", "ModelEvent", "ServingModels"]
