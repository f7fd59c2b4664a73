"""Data campaigns on the robot: a signed ``fleetloop.update_selection`` job changes the selector until it
expires, then the selection from before it comes back.

* **checked** like any package: the document's signature against the fleet's trusted keys (an unsigned
  or altered campaign is REJECTED), its fields by ``contracts.selection_job``, its ``changes`` by the
  selector's own validation (``Selector.update``: the same as ``ros2 param set``); a bad campaign is
  REJECTED with the reason and the running selection is untouched;
* **applied** atomically between two frames (``Selector.update``), reported with the campaign's version;
  a newer campaign replaces the active one, still rolling back to the selection from before the first;
* **expired** by :meth:`Campaigns.tick` (the deploy agent calls it between jobs): ``Selector.restore``
  puts the whole previous selection back (keys the campaign added included);
* **under an operator's change**: while a campaign runs, a change of the robot's own selection (``ros2
  param set`` on the selector node) goes to :meth:`Campaigns.set_base`: it becomes the selection that
  comes back at expiry, and the campaign is applied over it in the same step (the campaign's keys win
  while it runs; a change the campaign does not touch takes effect at once);
* **durable**: the active campaign and the selection it replaced are kept in a JSON file written
  atomically; after a restart :meth:`Campaigns.resume` applies it again over the selection the robot
  started with (which is what comes back at expiry), or does nothing if it expired meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from fleetloop_core.contracts.job_document import JobOutcome, JobRejected
from fleetloop_core.control_plane import write_json_atomic
from fleetloop_core.contracts.selection_job import SelectionJob, parse_selection_job
from fleetloop_core.errors import ConfigError
from fleetloop_core.selection import Selector
from fleetloop_core.selection_config import SelectionConfig, apply_changes, selection_config
from fleetloop_core.signing import SignatureError, TrustedKeys, verify_document

log = logging.getLogger("fleetloop_core.campaigns")
ROLE = "selection"


class Campaigns:
    """The robot's side of data campaigns for one selector."""

    def __init__(
        self,
        selector: Selector,
        trusted: Optional[TrustedKeys],
        state_path: Optional[str | Path] = None,
        clock: Callable[[], float] = time.time,
    ):
        self.selector = selector
        self.trusted = trusted  # None: campaigns are refused (a robot without trusted keys takes none)
        self.state_path = Path(state_path) if state_path is not None else None
        self.clock = clock
        self._lock = threading.Lock()
        self.active: Optional[dict[str, Any]] = None  # {"job": the document, "job_id", "previous": config dict}

    # ------------------------------------------------------------------ jobs
    def apply(self, job_id: str, document: Any) -> JobOutcome:
        """Check and apply a campaign job; return its outcome (REJECTED with the reason when it is bad)."""
        try:
            job = self._checked(job_id, document)
        except (JobRejected, SignatureError) as exc:
            log.warning("campaign job %s rejected: %s", job_id, exc)
            return JobOutcome(job_id, "REJECTED", str(exc), role=ROLE, version=self.serving_version)
        with self._lock:
            previous = self.active["previous"] if self.active else self.selector.config.model_dump(mode="json")
            try:
                if self.active:  # a newer campaign replaces the active one, on top of the selection before both
                    self.selector.restore(selection_config(previous, "campaign rollback"))
                self.selector.update(**job.changes)
            except ConfigError as exc:
                if self.active:  # put the active campaign back: a bad newer one changes nothing
                    self.selector.update(**self.active["job"]["changes"])
                log.warning("campaign job %s rejected: %s", job_id, exc)
                return JobOutcome(job_id, "REJECTED", f"campaign {job.campaign}: {exc}", ROLE, self.serving_version)
            self.active = {"job": job.model_dump(mode="json"), "job_id": job_id, "previous": previous}
            self._save()
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.expires_at))
        log.info("campaign %s version %s applied until %s: %s", job.campaign, job.version, until, job.reason)
        return JobOutcome(
            job_id,
            "SUCCEEDED",
            f"campaign {job.campaign} version {job.version} applied until {until}",
            ROLE,
            job.version,
            {"campaign": job.campaign, "expires_at": f"{job.expires_at:.0f}", "changes": json.dumps(job.changes)},
        )

    def _checked(self, job_id: str, document: Any) -> SelectionJob:
        if self.trusted is None:
            raise SignatureError(f"job {job_id}: this robot has no trusted keys configured, so it takes no campaign")
        if isinstance(document, dict):
            verify_document(document, self.trusted, f"job {job_id}")
        job = parse_selection_job(document, job_id)
        if job.expires_at <= self.clock():
            raise JobRejected(f"job {job_id}: campaign {job.campaign} expired at {job.expires_at:.0f} already")
        return job

    def set_base(self, config: SelectionConfig) -> SelectionConfig:
        """The robot's own selection changed: keep it for the expiry and apply it under a running campaign.

        One atomic step between two frames; ConfigError (nothing changes) when the campaign's changes do
        not fit the new selection. Returns the selection the selector now runs.
        """
        with self._lock:
            if self.active is None:
                return self.selector.restore(config)
            combined = apply_changes(
                config, self.active["job"]["changes"], source="campaign over the robot's selection"
            )
            running = self.selector.restore(combined)
            self.active["previous"] = config.model_dump(mode="json")
            self._save()
        log.info("selection changed under campaign %s: kept for its expiry", self.active["job"]["campaign"])
        return running

    @property
    def base(self) -> SelectionConfig:
        """Return the robot's own selection: the running one, or the one a running campaign replaced."""
        with self._lock:
            if self.active is None:
                return self.selector.config
            return selection_config(self.active["previous"], "campaign base")

    @property
    def serving_version(self) -> Optional[str]:
        """Return the active campaign's version (None: the robot's own selection)."""
        return self.active["job"]["version"] if self.active else None

    # ------------------------------------------------------------------ expiry and restarts
    def tick(self) -> Optional[str]:
        """Roll an expired campaign back to the selection from before it; return the campaign's name if so."""
        with self._lock:
            if self.active is None or self.clock() < float(self.active["job"]["expires_at"]):
                return None
            name = self.active["job"]["campaign"]
            self.selector.restore(selection_config(self.active["previous"], "campaign rollback"))
            self.active = None
            self._save()
        log.info("campaign %s expired: the previous selection is back", name)
        return name

    def resume(self) -> Optional[str]:
        """After a restart: apply the stored campaign again (or roll it back if it expired); return its name."""
        if self.state_path is None or not self.state_path.exists():
            return None
        stored = json.loads(self.state_path.read_text())
        if not stored:
            return None
        with self._lock:
            # what comes back at expiry is the selection this process started with (an operator may have
            # changed the robot's own config while the campaign ran), not the one stored before the restart
            self.active = {**stored, "previous": self.selector.config.model_dump(mode="json")}
            if self.clock() < float(stored["job"]["expires_at"]):
                self.selector.update(**stored["job"]["changes"])
        self.tick()
        return stored["job"]["campaign"]

    def _save(self) -> None:
        if self.state_path is not None:
            write_json_atomic(self.state_path, self.active or {})
