"""The steps that put a package into service on the robot, run on the model manager's job thread.

A deploy (:meth:`Deployer.deploy`), while the current model keeps serving:

    install (fetch, signature, compatibility, sha256; ``fleetloop_core.model_store``)
    ─► load + warm up (the manifest's task loads it: ``fleetloop_core.tasks.load_model``)
    ─► shadow check on the ring buffer's frames (:meth:`Deployer.shadow_check`: agreement with the
       current model as the task defines it, latency p99, NaN and constant outputs;
       ``fleetloop_core.model_checks.shadow_verdict``)
    ─► swap between two frames, then the watch until it passes or rolls back
       (``fleetloop_core.model_serving``).

A rollback to the history (:meth:`Deployer.roll_back_to_history`) loads an earlier installed version,
verifies its signature again and serves it. Each step that ends the job returns its
:class:`~fleetloop_core.contracts.job_document.JobOutcome`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fleetloop_core.contracts.job_document import JobDocument, JobOutcome
from fleetloop_core.delivery_state import DeliveryState
from fleetloop_core.errors import ModelError
from fleetloop_core.inference import TierModel
from fleetloop_core.model_checks import ShadowReport, shadow_verdict
from fleetloop_core.model_serving import ServingModels
from fleetloop_core.model_store import InstalledPackage, ModelStore, StoreFull
from fleetloop_core.model_watch import Watch
from fleetloop_core.package_checks import IncompatibleModel, PackageMismatch
from fleetloop_core.signing import SignatureError, verify_package
from fleetloop_core.store import StoreError
from fleetloop_core.tasks import ModelRun, task_of

Progress = Callable[[str, dict[str, str]], None]
Loader = Callable[..., TierModel]


class Deployer:
    """Puts packages from ``store`` into service in ``serving`` (one job at a time: the caller's lock)."""

    def __init__(
        self,
        serving: ServingModels,
        store: ModelStore,
        state: DeliveryState,
        loader: Loader,
        clock: Callable[[], float],
    ):
        self.serving = serving
        self.store = store
        self._state = state
        self._loader = loader
        self._clock = clock

    def _load(self, directory: Path) -> TierModel:
        config = self.serving.config  # read per job: the ROS node replaces it between jobs
        return self._loader(
            directory,
            providers=config.providers,
            intra_op_threads=config.intra_op_threads,
            warmup=config.warmup_runs,
        )

    # ------------------------------------------------------------------ deploy
    def deploy(self, job_id: str, doc: JobDocument, role: str, progress: Progress) -> JobOutcome:
        """Install, load, shadow-check, swap and watch the model; return the outcome of the step that ends the job."""
        serving = self.serving
        current = serving.model(role)
        wanted = doc.model
        if current is not None and current.version == wanted.version and current.manifest.name == wanted.name:
            serving.emit("already_serving", role, current.version, job_id=job_id, detail="no reload")
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
        serving.set_state(role, "warming")
        try:
            candidate = self._load(installed.directory)
        except ModelError as exc:
            return serving.fail(job_id, "FAILED", role, f"load failed: {exc}")
        load_s = self._clock() - started
        serving.emit("loaded", role, candidate.version, job_id=job_id, figures={"load_seconds": load_s})
        details: dict[str, Any] = {"load_seconds": f"{load_s:.3f}"}
        figures: dict[str, float] = {}
        if serving.config.shadow.enabled:
            shadow = self._shadow_step(job_id, role, candidate, details, progress)
            if isinstance(shadow, JobOutcome):
                return shadow
            figures = shadow.figures
        # the watchdog judges a confidence collapse against what the candidate itself showed on the shadow
        # frames: a better-calibrated model is often less confident than its predecessor, which is no fault
        watch = serving.swap(
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
        serving = self.serving
        wanted, location = doc.model, doc.package
        if location is None:  # JobDocument's validator makes this impossible for a deploy
            return serving.fail(job_id, "REJECTED", role, f"job {job_id}: fleetloop.deploy_model needs a package")
        serving.set_state(role, "downloading")
        serving.emit(
            "downloading", role, wanted.version, current.version if current else None, job_id, location.describe()
        )
        progress("downloading", {"step": "downloading", "version": wanted.version})
        try:
            package = self.store.install(
                location,
                serving=current.manifest if current is not None else None,
                expect_name=wanted.name,
                expect_version=wanted.version,
                protect=self._state.protected(),
            )
            if current is None and list(package.manifest.labels) != list(serving.cascade.edge.labels):
                raise IncompatibleModel(f"package {wanted.name} {wanted.version}: labels differ from the edge tier's")
        except (SignatureError, IncompatibleModel, PackageMismatch, StoreFull, ModelError) as exc:
            return serving.fail(job_id, "REJECTED", role, str(exc), kind="rejected")
        except StoreError as exc:
            return serving.fail(job_id, "FAILED", role, f"download failed: {exc}")
        serving.emit("installed", role, wanted.version, job_id=job_id, detail=str(package.directory))
        signature = package.manifest.signature
        progress(
            "verified", {"step": "verified", "version": wanted.version, "key_id": signature.key_id if signature else ""}
        )
        return package

    def _shadow_step(
        self, job_id: str, role: str, candidate: TierModel, details: dict[str, Any], progress: Progress
    ) -> ShadowReport | JobOutcome:
        """Run the shadow check and add its figures to ``details``; the passing report, or the failed outcome."""
        serving = self.serving
        serving.set_state(role, "shadow")
        try:
            report = self.shadow_check(role, candidate)
        except ModelError as exc:
            return serving.fail(job_id, "FAILED", role, f"shadow check could not run: {exc}", details)
        details.update({f"shadow_{k}": f"{v:.4g}" for k, v in report.figures.items()})
        if not report.passed:
            reason = "shadow check failed: " + "; ".join(report.reasons)
            serving.emit("shadow_failed", role, candidate.version, job_id=job_id, detail=reason, figures=report.figures)
            return serving.fail(job_id, "FAILED", role, reason, details, kind="failed")
        serving.emit("shadow_passed", role, candidate.version, job_id=job_id, figures=report.figures)
        progress("shadow_passed", {"step": "shadow_passed", **details})
        return report

    def shadow_check(self, role: str, candidate: TierModel) -> ShadowReport:
        """Run the current and the candidate model on the buffered frames (interleaved); return the verdict."""
        config = self.serving.config.shadow
        frames = self.serving.shadow_frames(config.min_frames, config.frame_wait_s)
        if len(frames) < config.min_frames:
            return ShadowReport(
                False,
                [f"only {len(frames)} frames buffered, the shadow check needs {config.min_frames}"],
                {"frames": float(len(frames))},
            )
        current = self.serving.model(role)
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

    def _watch_outcome(
        self, job_id: str, role: str, candidate: TierModel, watch: Watch, details: dict[str, Any]
    ) -> JobOutcome:
        """Wait for the watch to end; return SUCCEEDED, or FAILED when the watchdog rolled the model back."""
        # frames drive the watch; the timeout only covers a robot that stops seeing frames
        while not watch.done.wait(0.2):
            self.serving.watch_tick()
        judged = watch.judged(self.serving.config.watchdog)
        details.update(
            {
                "watch_frames": str(watch.stats.frames),
                "watch_errors": str(watch.stats.errors),
                "watch_judged": "true" if judged else "false",
            }
        )
        if watch.rolled_back_at is not None:
            return JobOutcome(
                job_id,
                "FAILED",
                f"rolled back to {watch.previous.version}: {watch.verdict}",
                role,
                watch.previous.version,
                details,
            )
        reason = f"serving {candidate.version}"
        if not judged:  # its window ran out (no camera frames, or a role that served few): no evidence either way
            reason += f" (watch unjudged: {watch.unjudged_reason(self.serving.config.watchdog)})"
        return JobOutcome(job_id, "SUCCEEDED", reason, role, candidate.version, details)

    # ------------------------------------------------------------------ rollback to an earlier version
    def roll_back_to_history(self, job_id: str, role: str, reason: str, to_version: str | None) -> JobOutcome:
        """Load an earlier installed version of ``role`` (the last one, or ``to_version``) and serve it."""
        serving = self.serving
        current = serving.model(role)
        history = self._state.earlier(role, current.version if current is not None else None)
        if to_version is not None:
            history = [e for e in history if e["version"] == to_version]
        if not history:
            reason_text = (
                f"no earlier version of {role} to roll back to"
                if to_version is None
                else f"version {to_version} of {role} is not in this robot's history"
            )
            return serving.fail(job_id, "FAILED", role, reason_text)
        target = history[-1]
        package = self.store.get(target["name"], target["version"])
        if package is None:
            return serving.fail(job_id, "FAILED", role, f"{target['name']} {target['version']} is no longer installed")
        started = self._clock()
        try:
            verify_package(package.directory, self.store.trusted)
            model = self._load(package.directory)
        except ModelError as exc:
            return serving.fail(job_id, "FAILED", role, f"rollback target unusable: {exc}")
        previous = serving.serve(role, model, target)
        seconds = self._clock() - started
        serving.emit(
            "rolled_back",
            role,
            model.version,
            previous.version if previous else None,
            job_id,
            reason,
            {"rollback_seconds": seconds},
        )
        serving.save_state()
        return JobOutcome(
            job_id,
            "SUCCEEDED",
            f"rolled back to {model.version}: {reason}",
            role,
            model.version,
            {"rollback_seconds": f"{seconds:.3f}"},
        )


__all__ = ["Deployer", "Loader", "Progress"]
