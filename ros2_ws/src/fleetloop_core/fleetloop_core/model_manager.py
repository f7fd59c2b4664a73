"""The on-robot model manager: take a deploy job, prove the candidate, hot-swap it, watch it, roll back.

Per job (on a background thread, one at a time, while the current model keeps serving):

    job ─► already done? (same job id: the stored outcome; same version serving: SUCCEEDED, no reload)
        ─► deploy: install, load + warm up, shadow check, swap between two frames, watch
           (``fleetloop_core.model_deploy``), or roll back (to the model a running watch replaced, else
           to an earlier installed version)

The manager is a :class:`~fleetloop_core.model_serving.ServingModels` (the serving pair, the ring buffer,
the watch, every transition as a :class:`~fleetloop_core.model_serving.ModelEvent`) that also takes jobs.
Job outcomes and the serving versions persist in the store's ``state.json``
(``fleetloop_core.delivery_state``), so a job delivered again after a restart is applied once. The pure
parts are elsewhere: the job contract in ``job_document``, the verdicts in ``model_checks``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Literal, Optional

from pydantic import Field

from fleetloop_core.cascade import Cascade
from fleetloop_core.config import ConfigModel, load_config
from fleetloop_core.contracts.job_document import JobDocument, JobOutcome, JobRejected, parse_job_document
from fleetloop_core.delivery_state import DeliveryState
from fleetloop_core.inference import DEFAULT_PROVIDERS
from fleetloop_core.model_checks import ShadowConfig, WatchdogConfig
from fleetloop_core.model_deploy import Deployer, Loader, Progress
from fleetloop_core.model_serving import ServingModels
from fleetloop_core.model_store import ModelStore, ModelStoreConfig
from fleetloop_core.tasks import load_model

log = logging.getLogger(__name__)

Role = Literal["edge", "escalation"]
ROLE_BY_TIER: dict[str, Role] = {"T4": "edge", "T3": "escalation"}


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


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: threads have their own)."""
    if nice <= 0:
        return
    try:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, os.getpriority(os.PRIO_PROCESS, thread_id) + nice))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run at normal priority
        log.debug("model manager: cannot lower the job thread's priority (%s)", exc)


class ModelManager(ServingModels):
    """Owns the serving models of one cascade and every change to them; takes the jobs that change them."""

    def __init__(
        self,
        cascade: Cascade,
        store: ModelStore,
        config: ModelManagerConfig | None = None,
        loader: Loader = load_model,
        clock: Callable[[], float] = time.monotonic,
    ):
        config = config or ModelManagerConfig()
        state = DeliveryState(store, history_kept=max(config.store.keep_versions, 2) * 2)
        super().__init__(cascade, config, state, clock)
        self.store = store
        self._deployer = Deployer(self, store, state, loader, clock)
        self._apply_lock = threading.Lock()  # one job at a time
        self._executor: Optional[ThreadPoolExecutor] = None
        self._in_flight: dict[str, Future] = {}
        if config.gil_switch_interval_s is not None:
            sys.setswitchinterval(config.gil_switch_interval_s)  # process-wide, see the config
        self.save_state()

    # ------------------------------------------------------------------ jobs
    def submit(self, job_id: str, document: dict[str, Any] | JobDocument, progress: Progress | None = None) -> Future:
        """Run :meth:`apply` on the manager's background thread; the same job id gives the same future."""
        with self._lock:
            future = self._in_flight.get(job_id)
            if future is not None:
                self.emit("duplicate_job", job_id=job_id, detail="job is already being applied")
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
            done = self._state.outcome(job_id)
            if done is not None:
                self.emit("duplicate_job", job_id=job_id, detail=f"already applied: {done['status']}")
                return JobOutcome(**done)
            outcome = self._apply(job_id, document, progress or (lambda step, details: None))
            self._state.record_outcome(job_id, outcome.to_dict())
            with self._lock:
                self._last_outcome = outcome
            self.save_state()
            return outcome

    def _apply(self, job_id: str, document: dict[str, Any] | JobDocument, progress: Progress) -> JobOutcome:
        try:
            doc = document if isinstance(document, JobDocument) else parse_job_document(document, job_id)
        except JobRejected as exc:
            self.emit("rejected", job_id=job_id, detail=str(exc))
            return JobOutcome(job_id, "REJECTED", str(exc))
        role = ROLE_BY_TIER.get(doc.model.tier)
        if role is None:
            reason = f"job {job_id}: jobDocument.model.tier {doc.model.tier} is not served on robots (T3, T4)"
            self.emit("rejected", job_id=job_id, detail=reason)
            return JobOutcome(job_id, "REJECTED", reason)
        self.emit("job_received", role, doc.model.version, job_id=job_id, detail=doc.operation)
        if doc.operation == "fleetloop.rollback_model":
            target = None if doc.model.version == "previous" else doc.model.version
            return self.rollback(role, reason=f"job {job_id}", to_version=target, job_id=job_id)
        return self._deployer.deploy(job_id, doc, role, progress)

    def rollback(
        self, role: str = "edge", reason: str = "manual", to_version: str | None = None, job_id: str | None = None
    ) -> JobOutcome:
        """Serve the previous version of ``role`` again (or ``to_version``); return the outcome."""
        job = job_id or f"rollback-{int(time.time() * 1000)}"
        current = self.model(role)
        watch = self.roll_back_watched(role, reason, to_version)
        if watch is not None:
            return JobOutcome(
                job, "SUCCEEDED", f"rolled back to {watch.previous.version}: {reason}", role, watch.previous.version
            )
        if current is not None and to_version is not None and current.version == to_version:
            self.emit("already_serving", role, to_version, job_id=job, detail="rollback target is serving")
            return JobOutcome(
                job, "SUCCEEDED", f"{to_version} is already serving", role, to_version, {"already_serving": "true"}
            )
        return self._deployer.roll_back_to_history(job, role, reason, to_version)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the background thread (a job in progress finishes first)."""
        self.end_watch()
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
    "ModelManager",
    "ModelManagerConfig",
    "load_manager_config",
    "serving_package_dirs",
]
