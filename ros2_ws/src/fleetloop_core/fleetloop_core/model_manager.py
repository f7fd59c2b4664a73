"""The on-robot model manager: take a deploy job, prove the candidate, hot-swap it, watch it, roll back.

Per job (on a background thread while the current model keeps serving):

    job ─► already done? (same job id: the stored outcome; same version serving: SUCCEEDED, no reload)
        ─► install (fetch, signature, compatibility, sha256; ``fleetloop_core.model_store``)
        ─► load + warm up (the manifest's task loads it: ``fleetloop_core.tasks.load_model``)
        ─► shadow check on the last K frames of the ring buffer (agreement with the current model as
           the task defines it: top-1 class, or every box matched; latency p99, NaN and constant
           outputs; :func:`shadow_verdict`)
        ─► swap between two frames (``Cascade.set_model``)
        ─► watchdog for a window of frames (latency, confidence collapse, error rate;
           :func:`watchdog_verdict`); a crossed limit swaps the previous model back at once.

Every transition becomes a :class:`ModelEvent` (logged once here, kept in a bounded list, passed to
listeners: the ROS node publishes them). Job outcomes and the serving versions persist in the
store's ``state.json``, so a job delivered again after a restart is applied once.

Why one module of ~850 lines: the manager's state (the serving pair, the ring buffer, the watch,
the history, the role states) is guarded by one lock and changed by the serving thread and the job
thread at once; every transition sits in this file so that lock's discipline reads in one place.
The pure parts are elsewhere: the job contract in ``job_document``, the verdicts in ``model_checks``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Optional

import numpy as np
from pydantic import Field

from fleetloop_core.cascade import Cascade, FrameResult
from fleetloop_core.config import ConfigModel, load_config
from fleetloop_core.errors import InputError, ModelError
from fleetloop_core.inference import DEFAULT_PROVIDERS, TierModel
from fleetloop_core.model_store import (
    IncompatibleModel,
    InstalledPackage,
    ModelStore,
    ModelStoreConfig,
    PackageMismatch,
    StoreFull,
)
from fleetloop_core.signing import SignatureError, verify_package
from fleetloop_core.store import StoreError
from fleetloop_core.contracts.job_document import JobDocument, JobOutcome, JobRejected, Status, parse_job_document
from fleetloop_core.model_checks import (
    ShadowConfig,
    ShadowReport,
    WatchdogConfig,
    WatchStats,
    percentile,
    shadow_verdict,
    watch_confidence_baseline,
    watchdog_verdict,
)
from fleetloop_core.tasks import ModelRun, Task, load_model, task_of

log = logging.getLogger(__name__)

Role = Literal["edge", "escalation"]
ROLE_BY_TIER: dict[str, Role] = {"T4": "edge", "T3": "escalation"}


# ====================================================================================== config
class ModelManagerConfig(ConfigModel):
    """Everything the model manager needs (config/model_manager.yaml, section model_manager)."""

    store: ModelStoreConfig = Field(default_factory=ModelStoreConfig)
    ring_buffer_frames: int = Field(default=32, ge=1)  # K frames kept for the shadow check ...
    # ... one of every this many frames: K consecutive camera frames are one scene (a track, a stretch of
    # background); spread over K x stride frames they are a fair sample of what the robot sees
    ring_stride_frames: int = Field(default=1, ge=1)
    providers: list[str] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    intra_op_threads: int = Field(default=1, ge=1)
    warmup_runs: int = Field(default=3, ge=0)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    events_kept: int = Field(default=200, ge=1)
    jobs_kept: int = Field(default=200, ge=1)  # job outcomes remembered (duplicate detection)
    # The serving thread and the job thread (download, load, warm-up, shadow check) share the GIL.
    # With Python's default 5 ms switch interval a frame can wait that long behind the job thread's
    # Python code; the manager sets the process's switch interval to this (seconds; None: leave it).
    gil_switch_interval_s: Optional[float] = Field(default=0.0005, gt=0.0, le=0.1)
    # Nice increment of the job thread (Linux per-thread nice). 0 by default: measured on a busy CPU,
    # a niced thread preempted while it holds the GIL stalls serving longer than it saves.
    background_nice: int = Field(default=0, ge=0, le=19)


def load_manager_config(path: str, section: str | None = "model_manager") -> ModelManagerConfig:
    """Return the model-manager config from a YAML file (by default its ``model_manager`` section)."""
    return load_config(ModelManagerConfig, path, section)


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


# ====================================================================================== the manager
@dataclass
class _Watch:
    job_id: str
    role: str
    tier: str
    version: str
    previous: TierModel
    task: Task
    started: float
    baseline_latency_s: float
    baseline_confidence: float
    baseline_p95_s: float
    stats: WatchStats = field(default_factory=WatchStats)
    done: threading.Event = field(default_factory=threading.Event)
    verdict: Optional[str] = None
    rolled_back_at: Optional[float] = None


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: threads have their own)."""
    if nice <= 0:
        return
    try:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, os.getpriority(os.PRIO_PROCESS, thread_id) + nice))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run at normal priority
        log.debug("model manager: cannot lower the job thread's priority (%s)", exc)


Progress = Callable[[str, dict[str, str]], None]
Loader = Callable[..., TierModel]


class ModelManager:
    """Owns the serving models of one cascade and every change to them."""

    def __init__(
        self,
        cascade: Cascade,
        store: ModelStore,
        config: ModelManagerConfig | None = None,
        loader: Loader = load_model,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cascade = cascade
        self.store = store
        self.config = config or ModelManagerConfig()
        self._loader = loader
        self._clock = clock
        self._lock = threading.RLock()  # state, ring, watch
        self._apply_lock = threading.Lock()  # one job at a time
        self._save_lock = threading.Lock()  # one writer of state.json
        self._ring: deque[np.ndarray] = deque(maxlen=self.config.ring_buffer_frames)
        self._ring_seen = 0
        self._recent: dict[str, deque[tuple[float, float]]] = {
            role: deque(maxlen=max(self.config.ring_buffer_frames, 32)) for role in ("edge", "escalation")
        }
        self._frames_seen = threading.Condition(self._lock)
        self._watch: Optional[_Watch] = None
        self._role_state: dict[str, str] = {"edge": "serving", "escalation": "serving"}
        self._events: deque[ModelEvent] = deque(maxlen=self.config.events_kept)
        self._listeners: list[Callable[[ModelEvent], None]] = []
        self._executor: Optional[ThreadPoolExecutor] = None
        self._in_flight: dict[str, Future] = {}
        self._last_outcome: Optional[JobOutcome] = None
        if self.config.gil_switch_interval_s is not None:
            sys.setswitchinterval(self.config.gil_switch_interval_s)  # process-wide, see the config
        state = store.load_state()
        self._jobs: dict[str, dict[str, Any]] = dict(state.get("jobs", {}))
        self._history: dict[str, list[dict[str, str]]] = {k: list(v) for k, v in state.get("history", {}).items()}
        for role, model in (("edge", cascade.edge), ("escalation", cascade.escalation)):
            if model is not None:
                self._remember_serving(role, model)
        self._save_state()

    # ------------------------------------------------------------------ listeners and state
    def add_listener(self, listener: Callable[[ModelEvent], None]) -> None:
        """Call ``listener(event)`` for every future transition."""
        self._listeners.append(listener)

    def _emit(
        self,
        kind: str,
        role: str | None = None,
        version: str | None = None,
        previous_version: str | None = None,
        job_id: str | None = None,
        detail: str = "",
        figures: dict[str, float] | None = None,
    ) -> ModelEvent:
        event = ModelEvent(time.time(), kind, role, version, previous_version, job_id, detail, dict(figures or {}))
        self._events.append(event)
        level = logging.WARNING if kind in ("rejected", "shadow_failed", "rolled_back", "failed") else logging.INFO
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
                serving={
                    role: m.version
                    for role, m in (("edge", self.cascade.edge), ("escalation", self.cascade.escalation))
                    if m is not None
                },
                state=dict(self._role_state),
                watching=watching,
                last_outcome=self._last_outcome.to_dict() if self._last_outcome else None,
                events=len(self._events),
            )

    def _model(self, role: str) -> TierModel | None:
        return self.cascade.edge if role == "edge" else self.cascade.escalation

    def _remember_serving(self, role: str, model: TierModel) -> None:
        history = self._history.setdefault(role, [])
        entry = {"name": model.manifest.name, "version": model.version}
        if not history or history[-1] != entry:
            history.append(entry)
        del history[: -max(self.config.store.keep_versions, 2) * 2]

    def _save_state(self) -> None:
        with self._lock:
            jobs = dict(list(self._jobs.items())[-self.config.jobs_kept :])
            self._jobs = jobs
            serving = {
                role: {"name": m.manifest.name, "version": m.version}
                for role, m in (("edge", self.cascade.edge), ("escalation", self.cascade.escalation))
                if m is not None
            }
            history = {role: [dict(e) for e in entries] for role, entries in self._history.items()}
            state = {"serving": serving, "history": history, "jobs": jobs}
        with self._save_lock:
            self.store.save_state(state)

    def _protected(self) -> set[tuple[str, str]]:
        """Return the (name, version) pairs pruning must keep: serving and the rollback targets."""
        keep: set[tuple[str, str]] = set()
        for history in self._history.values():
            for entry in history[-2:]:
                keep.add((entry["name"], entry["version"]))
        return keep

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
        rollback: Optional[_Watch] = None
        finished: Optional[_Watch] = None
        with self._lock:
            if frame is not None:
                if self._ring_seen % self.config.ring_stride_frames == 0:
                    self._ring.append(np.array(frame, copy=True))
                    self._frames_seen.notify_all()
                self._ring_seen += 1
            bad = error is not None or (result is not None and not np.isfinite(result.probs).all())
            if result is not None and not bad:
                for role in ("edge", "escalation"):
                    model = self._model(role)
                    if model is not None and model.tier in result.latency_s:
                        confidence = task_of(model).served_confidence(result, model.tier)
                        if confidence is not None:
                            self._recent[role].append((result.latency_s[model.tier], confidence))
            watch = self._watch
            if watch is not None and not watch.done.is_set():
                stats = watch.stats
                if result is None or result.model_versions.get(watch.tier) == watch.version:
                    stats.frames += 1
                    if bad:
                        stats.errors += 1
                    elif result is not None and watch.tier in result.latency_s:
                        stats.latencies_s.append(result.latency_s[watch.tier])
                        confidence = watch.task.served_confidence(result, watch.tier)
                        if confidence is not None:
                            stats.confidences.append(confidence)
                verdict = watchdog_verdict(
                    stats,
                    watch.baseline_latency_s,
                    watch.baseline_confidence,
                    self.config.watchdog,
                    watch.baseline_p95_s,
                )
                if verdict is not None:
                    watch.verdict = verdict
                    rollback = watch
                elif (
                    stats.frames >= self.config.watchdog.window_frames
                    or self._clock() - watch.started >= self.config.watchdog.window_s
                ):
                    finished = watch
        # listeners run outside the lock: a slow one must not hold up the job thread
        if finished is not None:
            self._finish_watch(finished)
        if rollback is not None:
            self._roll_back_watch(rollback, f"watchdog: {rollback.verdict}")

    def _finish_watch(self, watch: _Watch) -> None:
        with self._lock:
            if watch.done.is_set() or watch.verdict is not None:
                return
            self._role_state[watch.role] = "serving"
            figures = {"watch_frames": float(watch.stats.frames), "watch_errors": float(watch.stats.errors)}
            if watch.stats.latencies_s:
                figures["watch_latency_p95_ms"] = percentile(watch.stats.latencies_s, 95) * 1000.0
            watch.done.set()
        self._emit(
            "watch_passed",
            watch.role,
            watch.version,
            watch.previous.version,
            watch.job_id,
            f"{watch.stats.frames} frames without crossing a limit",
            figures,
        )

    def _roll_back_watch(self, watch: _Watch, reason: str) -> None:
        with self._lock:
            if watch.done.is_set():
                return
            current = self._model(watch.role)
            if current is not None and current.version == watch.version:
                self.cascade.set_model(watch.role, watch.previous)  # instant: the old session is still warm
                self._remember_serving(watch.role, watch.previous)
            watch.rolled_back_at = self._clock()
            watch.verdict = reason
            self._role_state[watch.role] = "serving"
            watch.done.set()
        # no state write here: this may run on the serving thread; the job's thread saves the state
        self._emit(
            "rolled_back",
            watch.role,
            watch.previous.version,
            watch.version,
            watch.job_id,
            reason,
            {"watch_frames": float(watch.stats.frames), "watch_errors": float(watch.stats.errors)},
        )

    def watch_tick(self) -> None:
        """End a watch whose time window has passed even when no frames arrive (call periodically)."""
        with self._lock:
            watch = self._watch
            due = (
                watch is not None
                and not watch.done.is_set()
                and self._clock() - watch.started >= self.config.watchdog.window_s
            )
        if due and watch is not None:
            self._finish_watch(watch)

    # ------------------------------------------------------------------ jobs
    def submit(self, job_id: str, document: dict[str, Any] | JobDocument, progress: Progress | None = None) -> Future:
        """Run :meth:`apply` on the manager's background thread; the same job id gives the same future."""
        with self._lock:
            future = self._in_flight.get(job_id)
            if future is not None:
                self._emit("duplicate_job", job_id=job_id, detail="job is already being applied")
                return future
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix="model-manager",
                    initializer=_lower_priority,
                    initargs=(self.config.background_nice,),
                )
            future = self._executor.submit(self.apply, job_id, document, progress)
            self._in_flight[job_id] = future
            future.add_done_callback(lambda _f: self._in_flight.pop(job_id, None))
            return future

    def apply(
        self, job_id: str, document: dict[str, Any] | JobDocument, progress: Progress | None = None
    ) -> JobOutcome:
        """Apply one job and return its outcome; a job id seen before returns the stored outcome."""
        with self._apply_lock:
            with self._lock:
                done = self._jobs.get(job_id)
            if done is not None:
                self._emit("duplicate_job", job_id=job_id, detail=f"already applied: {done['status']}")
                return JobOutcome(**done)
            outcome = self._apply(job_id, document, progress or (lambda step, details: None))
            with self._lock:
                self._jobs[job_id] = outcome.to_dict()
                self._last_outcome = outcome
            self._save_state()
            return outcome

    def _apply(self, job_id: str, document: dict[str, Any] | JobDocument, progress: Progress) -> JobOutcome:
        try:
            doc = document if isinstance(document, JobDocument) else parse_job_document(document, job_id)
        except JobRejected as exc:
            self._emit("rejected", job_id=job_id, detail=str(exc))
            return JobOutcome(job_id, "REJECTED", str(exc))
        role = ROLE_BY_TIER.get(doc.model.tier)
        if role is None:
            reason = f"job {job_id}: jobDocument.model.tier {doc.model.tier} is not served on robots (T3, T4)"
            self._emit("rejected", job_id=job_id, detail=reason)
            return JobOutcome(job_id, "REJECTED", reason)
        self._emit("job_received", role, doc.model.version, job_id=job_id, detail=doc.operation)
        if doc.operation == "fleetloop.rollback_model":
            target = None if doc.model.version == "previous" else doc.model.version
            return self.rollback(role, reason=f"job {job_id}", to_version=target, job_id=job_id)
        return self._deploy(job_id, doc, role, progress)

    def _fail(
        self,
        job_id: str,
        status: Status,
        role: str,
        reason: str,
        details: dict[str, Any] | None = None,
        kind: str = "failed",
    ) -> JobOutcome:
        current = self._model(role)
        with self._lock:
            self._role_state[role] = "serving"
        self._emit(kind, role, current.version if current else None, job_id=job_id, detail=reason)
        return JobOutcome(
            job_id,
            status,
            reason,
            role,
            current.version if current else None,
            {k: str(v) for k, v in (details or {}).items()},
        )

    def _deploy(self, job_id: str, doc: JobDocument, role: str, progress: Progress) -> JobOutcome:
        """Install, load, shadow-check, swap and watch the model; return the outcome of the step that ends the job."""
        current = self._model(role)
        wanted = doc.model
        if current is not None and current.version == wanted.version and current.manifest.name == wanted.name:
            self._emit("already_serving", role, current.version, job_id=job_id, detail="no reload")
            return JobOutcome(
                job_id,
                "SUCCEEDED",
                f"{wanted.name} {wanted.version} is already serving",
                role,
                current.version,
                {"already_serving": "true"},
            )
        started = self._clock()
        installed = self._install(job_id, doc, role, current, progress)
        if isinstance(installed, JobOutcome):
            return installed
        with self._lock:
            self._role_state[role] = "warming"
        try:
            candidate = self._loader(
                installed.directory,
                providers=self.config.providers,
                intra_op_threads=self.config.intra_op_threads,
                warmup=self.config.warmup_runs,
            )
        except ModelError as exc:
            return self._fail(job_id, "FAILED", role, f"load failed: {exc}")
        load_s = self._clock() - started
        self._emit("loaded", role, candidate.version, job_id=job_id, figures={"load_seconds": load_s})
        details: dict[str, Any] = {"load_seconds": f"{load_s:.3f}"}
        figures: dict[str, float] = {}
        if self.config.shadow.enabled:
            shadow = self._shadow_step(job_id, role, candidate, details, progress)
            if isinstance(shadow, JobOutcome):
                return shadow
            figures = shadow.figures
        # the watchdog judges a confidence collapse against what the candidate itself showed on the shadow
        # frames: a better-calibrated model is often less confident than its predecessor, which is no fault
        watch = self._swap(
            job_id,
            role,
            candidate,
            expected_confidence=figures.get("confidence_mean", float("nan")),
            current_shadow_confidence=figures.get("current_confidence_mean", float("nan")),
        )
        details["swap_seconds"] = f"{self._clock() - started:.3f}"
        if watch is None:
            return JobOutcome(job_id, "SUCCEEDED", f"serving {candidate.version}", role, candidate.version, details)
        progress("watching", {"step": "watching", **details})
        return self._watch_outcome(job_id, role, candidate, watch, details)

    def _install(
        self, job_id: str, doc: JobDocument, role: str, current: TierModel | None, progress: Progress
    ) -> InstalledPackage | JobOutcome:
        """Download and verify the job's package into the model store; the package, or the outcome that ends the job."""
        wanted, location = doc.model, doc.package
        if location is None:  # JobDocument's validator makes this impossible for a deploy
            return self._fail(job_id, "REJECTED", role, f"job {job_id}: fleetloop.deploy_model needs a package")
        with self._lock:
            self._role_state[role] = "downloading"
        self._emit(
            "downloading", role, wanted.version, current.version if current else None, job_id, location.describe()
        )
        progress("downloading", {"step": "downloading", "version": wanted.version})
        try:
            package = self.store.install(
                location,
                serving=current.manifest if current is not None else None,
                expect_name=wanted.name,
                expect_version=wanted.version,
                protect=self._protected(),
            )
            if current is None and list(package.manifest.labels) != list(self.cascade.edge.labels):
                raise IncompatibleModel(f"package {wanted.name} {wanted.version}: labels differ from the edge tier's")
        except (SignatureError, IncompatibleModel, PackageMismatch, StoreFull, ModelError) as exc:
            return self._fail(job_id, "REJECTED", role, str(exc), kind="rejected")
        except StoreError as exc:
            return self._fail(job_id, "FAILED", role, f"download failed: {exc}")
        self._emit("installed", role, wanted.version, job_id=job_id, detail=str(package.directory))
        signature = package.manifest.signature
        progress(
            "verified", {"step": "verified", "version": wanted.version, "key_id": signature.key_id if signature else ""}
        )
        return package

    def _shadow_step(
        self, job_id: str, role: str, candidate: TierModel, details: dict[str, Any], progress: Progress
    ) -> ShadowReport | JobOutcome:
        """Run the shadow check and add its figures to ``details``; the passing report, or the failed outcome."""
        with self._lock:
            self._role_state[role] = "shadow"
        try:
            report = self.shadow_check(role, candidate)
        except ModelError as exc:
            return self._fail(job_id, "FAILED", role, f"shadow check could not run: {exc}", details)
        details.update({f"shadow_{k}": f"{v:.4g}" for k, v in report.figures.items()})
        if not report.passed:
            reason = "shadow check failed: " + "; ".join(report.reasons)
            self._emit("shadow_failed", role, candidate.version, job_id=job_id, detail=reason, figures=report.figures)
            return self._fail(job_id, "FAILED", role, reason, details, kind="failed")
        self._emit("shadow_passed", role, candidate.version, job_id=job_id, figures=report.figures)
        progress("shadow_passed", {"step": "shadow_passed", **details})
        return report

    def _watch_outcome(
        self, job_id: str, role: str, candidate: TierModel, watch: _Watch, details: dict[str, Any]
    ) -> JobOutcome:
        """Wait for the watch to end; return SUCCEEDED, or FAILED when the watchdog rolled the model back."""
        # frames drive the watch; the timeout only covers a robot that stops seeing frames
        while not watch.done.wait(0.2):
            self.watch_tick()
        details.update({"watch_frames": str(watch.stats.frames), "watch_errors": str(watch.stats.errors)})
        if watch.rolled_back_at is not None:
            return JobOutcome(
                job_id,
                "FAILED",
                f"rolled back to {watch.previous.version}: {watch.verdict}",
                role,
                watch.previous.version,
                details,
            )
        return JobOutcome(job_id, "SUCCEEDED", f"serving {candidate.version}", role, candidate.version, details)

    def _swap(
        self,
        job_id: str,
        role: str,
        candidate: TierModel,
        expected_confidence: float = float("nan"),
        current_shadow_confidence: float = float("nan"),
    ) -> Optional[_Watch]:
        """Swap ``candidate`` in between two frames; return the watch started for it (None: no watchdog).

        ``expected_confidence`` / ``current_shadow_confidence``: the candidate's / the serving model's mean
        confidence in the shadow check (:func:`watch_confidence_baseline` makes the watchdog's baseline).
        """
        with self._lock:
            recent = list(self._recent[role])
            previous = self.cascade.set_model(role, candidate)  # atomic between two frames
            self._recent[role].clear()
            self._remember_serving(role, candidate)
            watch = None
            if previous is not None and self.config.watchdog.enabled:
                # after a shadow check the before/after latency ratio is not judged (see watchdog_verdict)
                baseline_latency = (
                    percentile([r[0] for r in recent], 50)
                    if recent and not math.isfinite(current_shadow_confidence)
                    else float("nan")
                )
                baseline_confidence = watch_confidence_baseline(
                    role, expected_confidence, current_shadow_confidence, [r[1] for r in recent]
                )
                baseline_p95 = percentile([r[0] for r in recent], 95) if recent else float("nan")
                watch = _Watch(
                    job_id,
                    role,
                    candidate.tier,
                    candidate.version,
                    previous,
                    task_of(candidate),
                    self._clock(),
                    baseline_latency,
                    baseline_confidence,
                    baseline_p95,
                )
                self._watch = watch
                self._role_state[role] = "watching"
            else:
                self._role_state[role] = "serving"
        self._emit("swapped", role, candidate.version, previous.version if previous else None, job_id)
        self._save_state()
        return watch

    # ------------------------------------------------------------------ shadow check
    def buffered_frames(self) -> int:
        """Return how many frames the ring buffer holds."""
        with self._lock:
            return len(self._ring)

    def shadow_check(self, role: str, candidate: TierModel) -> ShadowReport:
        """Run the current and the candidate model on the buffered frames (interleaved); return the verdict."""
        config = self.config.shadow
        with self._lock:
            deadline = self._clock() + config.frame_wait_s
            while len(self._ring) < config.min_frames and self._clock() < deadline:
                self._frames_seen.wait(timeout=min(0.5, max(0.01, deadline - self._clock())))
            frames = list(self._ring)
        if len(frames) < config.min_frames:
            return ShadowReport(
                False,
                [f"only {len(frames)} frames buffered, the shadow check needs {config.min_frames}"],
                {"frames": float(len(frames))},
            )
        current = self._model(role)
        if current is None:  # nothing to compare with: judge the candidate alone
            current = candidate
        task = task_of(candidate)
        if task is not task_of(current):
            raise ModelError(
                f"{candidate.manifest.name}: task {candidate.manifest.task} cannot replace "
                f"{current.manifest.name} (task {current.manifest.task})"
            )
        ours: list[ModelRun] = []
        theirs: list[ModelRun] = []
        for frame in frames:
            ours.append(task.run(current, frame))
            theirs.append(task.run(candidate, frame))
            if config.pace_s:
                time.sleep(config.pace_s)
        return shadow_verdict(
            np.stack([r.scores for r in ours]),
            np.stack([r.scores for r in theirs]),
            [r.latency_s for r in ours],
            [r.latency_s for r in theirs],
            config,
            np.array([task.agree(a, b) for a, b in zip(ours, theirs)], bool),
        )

    # ------------------------------------------------------------------ rollback
    def rollback(
        self, role: str = "edge", reason: str = "manual", to_version: str | None = None, job_id: str | None = None
    ) -> JobOutcome:
        """Serve the previous version of ``role`` again (or ``to_version``); return the outcome."""
        job = job_id or f"rollback-{int(time.time() * 1000)}"
        current = self._model(role)
        with self._lock:
            watch = self._watch
        if (
            watch is not None
            and watch.role == role
            and not watch.done.is_set()
            and (to_version is None or to_version == watch.previous.version)
        ):
            self._roll_back_watch(watch, reason)
            self._save_state()
            return JobOutcome(
                job, "SUCCEEDED", f"rolled back to {watch.previous.version}: {reason}", role, watch.previous.version
            )
        if current is not None and to_version is not None and current.version == to_version:
            self._emit("already_serving", role, to_version, job_id=job, detail="rollback target is serving")
            return JobOutcome(
                job, "SUCCEEDED", f"{to_version} is already serving", role, to_version, {"already_serving": "true"}
            )
        return self._roll_back_to_history(job, role, current, reason, to_version)

    def _roll_back_to_history(
        self, job: str, role: str, current: TierModel | None, reason: str, to_version: str | None
    ) -> JobOutcome:
        """Load an earlier installed version of ``role`` (the last one, or ``to_version``) and serve it."""
        history = [e for e in self._history.get(role, []) if current is None or e["version"] != current.version]
        if to_version is not None:
            history = [e for e in history if e["version"] == to_version]
        if not history:
            reason_text = (
                f"no earlier version of {role} to roll back to"
                if to_version is None
                else f"version {to_version} of {role} is not in this robot's history"
            )
            return self._fail(job, "FAILED", role, reason_text)
        target = history[-1]
        package = self.store.get(target["name"], target["version"])
        if package is None:
            return self._fail(job, "FAILED", role, f"{target['name']} {target['version']} is no longer installed")
        started = self._clock()
        try:
            verify_package(package.directory, self.store.trusted)
            model = self._loader(
                package.directory,
                providers=self.config.providers,
                intra_op_threads=self.config.intra_op_threads,
                warmup=self.config.warmup_runs,
            )
        except ModelError as exc:
            return self._fail(job, "FAILED", role, f"rollback target unusable: {exc}")
        with self._lock:
            previous = self.cascade.set_model(role, model)
            self._history[role] = [e for e in self._history.get(role, []) if e != target]
            self._remember_serving(role, model)
            self._role_state[role] = "serving"
        seconds = self._clock() - started
        self._emit(
            "rolled_back",
            role,
            model.version,
            previous.version if previous else None,
            job,
            reason,
            {"rollback_seconds": seconds},
        )
        self._save_state()
        return JobOutcome(
            job,
            "SUCCEEDED",
            f"rolled back to {model.version}: {reason}",
            role,
            model.version,
            {"rollback_seconds": f"{seconds:.3f}"},
        )

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the background thread (a job in progress finishes first)."""
        with self._lock:
            watch = self._watch
        if watch is not None and not watch.done.is_set():
            self._finish_watch(watch)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def serving_package_dirs(store: ModelStore) -> dict[str, str]:
    """Return {role: package directory} of the versions the robot served last (for a restart)."""
    state = store.load_state()
    found = {}
    for role, entry in state.get("serving", {}).items():
        package = store.get(entry.get("name", ""), entry.get("version", ""))
        if package is not None:
            found[role] = str(package.directory)
    return found


__all__ = [
    "ROLE_BY_TIER",
    "ManagerStatus",
    "ModelEvent",
    "ModelManager",
    "ModelManagerConfig",
    "load_manager_config",
    "serving_package_dirs",
]
