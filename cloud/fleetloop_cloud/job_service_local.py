"""The embedded job backend: jobs as files in the directory the robots' ``local`` control plane watches.

Layout per thing (shared with ``fleetloop_core.control_plane.LocalControlPlane``):
``<dir>/<thing>/queued|in_progress|done/<job>.json`` hold the execution, ``<dir>/<thing>/status/<job>.json``
the status the robot last reported.
"""

from __future__ import annotations

import json
from pathlib import Path

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.control_plane import write_json_atomic

from fleetloop_cloud.fleet_jobs import DeployError, ExecutionState, FleetJobs, JobRequest
from fleetloop_cloud.job_store import Execution


class LocalDirJobs(FleetJobs):
    """Jobs as files in the directory the robots' local control plane watches."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.uri = f"file://{self.directory}"
        self._targets: dict[str, list[str]] = {}

    def _path(self, thing: str, state: str, job_id: str) -> Path:
        return self.directory / thing / state / f"{job_id}.json"

    def _submit(self, job: JobRequest) -> None:
        for thing in job.things:
            for state in ("queued", "in_progress", "done"):
                if self._path(thing, state, job.job_id).exists():
                    raise DeployError(f"{self.uri}: job {job.job_id} exists already for {thing}")
        for thing in job.things:
            write_json_atomic(
                self._path(thing, "queued", job.job_id), Execution(job.job_id, thing, job.document).data()
            )
        self._targets[job.job_id] = job.things

    def _things(self, job_id: str) -> list[str]:
        if job_id in self._targets:
            return self._targets[job_id]
        return sorted(p.parent.parent.name for p in self.directory.glob(f"*/*/{job_id}.json"))

    def executions(self, job_id: str) -> dict[str, ExecutionState]:
        states = {}
        for thing in self._things(job_id):
            status_path = self._path(thing, "status", job_id)
            if status_path.exists():
                data = json.loads(status_path.read_text())
                states[thing] = ExecutionState(thing, data["status"], data.get("statusDetails", {}))
            elif self._path(thing, "queued", job_id).exists():
                states[thing] = ExecutionState(thing, "QUEUED")
            elif self._path(thing, "in_progress", job_id).exists():
                states[thing] = ExecutionState(thing, "IN_PROGRESS")  # claimed, first status not written yet
            else:
                states[thing] = ExecutionState(thing, "REMOVED", {"reason": "job file gone without a status"})
        return states

    def cancel_job(self, job_id: str, reason: str) -> None:
        for thing in self._things(job_id):
            try:
                self._path(thing, "queued", job_id).unlink()
            except FileNotFoundError:
                continue
            write_json_atomic(
                self._path(thing, "status", job_id),
                {
                    "jobId": job_id,
                    "thingName": thing,
                    "status": "CANCELED",
                    "statusDetails": {"reason": reason},
                    "lastUpdatedAt": iot_jobs.now_s(),
                },
            )
