"""The robot's deploy agent: jobs from a control plane in, model-manager outcomes back out.

One thread: claim the next job, hand it to the :class:`~fleetloop_core.model_manager.ModelManager`
(progress goes back as IN_PROGRESS updates, best effort) or, for a data campaign
(``fleetloop.update_selection``), to the robot's :class:`~fleetloop_core.selection_campaigns.Campaigns`,
then deliver the final status — retried with exponential back-off until the control plane takes it,
because the cloud's canary decision waits for it. Between jobs it expires campaigns whose time is up.
Serving never waits for any of this.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from fleetloop_core.control_plane import ControlPlane, ControlPlaneError, ControlPlaneUnavailable, Job
from fleetloop_core.contracts.job_document import JobOutcome
from fleetloop_core.contracts.selection_job import OPERATION as CAMPAIGN
from fleetloop_core.model_manager import ModelManager
from fleetloop_core.selection_campaigns import Campaigns

log = logging.getLogger(__name__)

STOP_JOIN_S = 30.0  # how long stop() waits for a job in progress (a download, a shadow check) to finish


class DeployAgent:
    """Runs jobs from ``plane`` through ``manager`` on a background thread."""

    def __init__(
        self,
        plane: ControlPlane,
        manager: ModelManager,
        poll_s: float = 30.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        campaigns: Optional[Campaigns] = None,
    ):
        self.plane = plane
        self.manager = manager
        self.campaigns = campaigns  # None: campaign jobs are rejected (no selector on this process)
        self.poll_s = poll_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.outcomes: list[JobOutcome] = []

    def start(self) -> None:
        """Connect the control plane and start taking jobs."""
        self.plane.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="deploy-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking jobs and disconnect. A job in progress finishes first; a watch in it that is still
        waiting for frames (``watchdog.unjudged_after_s``: minutes) ends now, unjudged, as the manager's close
        would end it, so shutting down does not wait it out (its outcome is delivered after a restart)."""
        self._stop.set()
        self.plane.close()
        if self._thread is not None:
            deadline = time.monotonic() + STOP_JOIN_S
            while self._thread.is_alive() and time.monotonic() < deadline:
                self.manager.end_watch()  # the job may swap (and start a watch) while we wait
                self._thread.join(timeout=0.1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(self.poll_s)
            except Exception:  # the agent must outlive any one bad job or network hiccup
                log.exception("deploy agent: job loop error")
                self._stop.wait(self.retry_min_s)

    def run_once(self, timeout_s: float) -> Optional[JobOutcome]:
        """Take at most one job (waiting up to ``timeout_s``), apply it, report it; return its outcome."""
        if self.campaigns is not None:
            self.campaigns.tick()
        job = self.plane.next_job(timeout_s)
        if job is None:
            return None
        log.info(
            "%s: job %s received (%s)",
            self.plane.thing_name,
            job.job_id,
            job.document.get("operation") if isinstance(job.document, dict) else "?",
        )
        operation = job.document.get("operation") if isinstance(job.document, dict) else None
        if operation == CAMPAIGN:
            outcome = (
                self.campaigns.apply(job.job_id, job.document)
                if self.campaigns is not None
                else JobOutcome(job.job_id, "REJECTED", f"{CAMPAIGN}: this robot process runs no selector")
            )
        else:  # on the manager's own (lower-priority) job thread, so serving keeps the CPU
            outcome = self.manager.submit(
                job.job_id, job.document, progress=lambda step, details: self._progress(job, details)
            ).result()
        self.outcomes.append(outcome)
        self._deliver(job, outcome)
        return outcome

    def _progress(self, job: Job, details: dict[str, Any]) -> None:
        try:
            self.plane.update(job, "IN_PROGRESS", details)
        except ControlPlaneError as exc:  # progress is informative; the final status is what counts
            log.info("%s: progress of %s not delivered (%s)", self.plane.thing_name, job.job_id, exc)

    def _deliver(self, job: Job, outcome: JobOutcome) -> None:
        delay = self.retry_min_s
        while True:
            try:
                self.plane.update(job, outcome.status, outcome.status_details())
                log.info(
                    "%s: job %s reported %s: %s", self.plane.thing_name, job.job_id, outcome.status, outcome.reason
                )
                return
            except ControlPlaneUnavailable as exc:
                if self._stop.is_set():
                    log.warning(
                        "%s: job %s status %s undelivered at shutdown; the job comes back after a "
                        "restart and its stored outcome is reported then",
                        self.plane.thing_name,
                        job.job_id,
                        outcome.status,
                    )
                    return
                log.info(
                    "%s: status of %s not delivered yet (%s); retry in %.1f s",
                    self.plane.thing_name,
                    job.job_id,
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
            except ControlPlaneError as exc:
                # e.g. the job was canceled meanwhile or already terminal: nothing more to say
                log.warning("%s: final status of %s refused: %s", self.plane.thing_name, job.job_id, exc)
                return
