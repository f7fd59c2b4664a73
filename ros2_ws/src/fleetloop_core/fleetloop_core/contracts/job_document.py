"""The deploy job document a robot understands, and how a job ended: the contract between cloud and robot.

The cloud builds documents with these models (``fleetloop_cloud.fleet_jobs.deploy_document``); the robot
parses them with :func:`parse_job_document` and answers with a :class:`JobOutcome` whose
``status_details()`` are IoT Jobs ``statusDetails``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel, validate
from fleetloop_core.errors import FleetLoopError
from fleetloop_core.model_store import PackageLocation

log = logging.getLogger("fleetloop_core.model_manager")  # where operators look for job decisions

OPERATIONS = ("fleetloop.deploy_model", "fleetloop.rollback_model")
Status = Literal["SUCCEEDED", "FAILED", "REJECTED"]


class ModelRef(ConfigModel):
    """Which model a job means: name, version and tier (T4 → edge role, T3 → escalation role)."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    tier: Literal["T1", "T2", "T3", "T4"]


class JobDocument(ConfigModel):
    """The job document (IoT Jobs ``jobDocument``) a robot understands.

    ``fleetloop.deploy_model`` needs ``package``; ``fleetloop.rollback_model`` rolls the tier back to
    ``model.version`` (or to the previous version when ``model.version`` is ``previous``).
    """

    operation: Literal["fleetloop.deploy_model", "fleetloop.rollback_model"]
    model: ModelRef
    package: Optional[PackageLocation] = None

    @model_validator(mode="after")
    def _package_for_deploy(self) -> "JobDocument":
        if self.operation == "fleetloop.deploy_model" and self.package is None:
            raise ValueError("fleetloop.deploy_model needs a package")
        return self


class JobRejected(FleetLoopError):
    """A job document the robot cannot act on (the message names the field)."""


def parse_job_document(data: Any, job_id: str = "<job>") -> JobDocument:
    """Return the validated job document; JobRejected naming the job, field and value otherwise.

    Keys policy (a document may come from a job template or another tool that adds its own
    fields): top-level keys outside our operation's own fields (``operation``, ``model``,
    ``package``) are ignored and logged; an unknown key *inside* ``model`` or ``package`` is
    rejected, naming it, because there it would change what gets installed.
    """
    if not isinstance(data, dict):
        raise JobRejected(f"job {job_id}: jobDocument must be a JSON object (got {type(data).__name__})")
    ours = set(JobDocument.model_fields)
    ignored = sorted(k for k in data if k not in ours)
    if ignored:
        log.info("job %s: ignoring jobDocument keys outside FleetLoop's operation: %s", job_id, ", ".join(ignored))
    try:
        return validate(
            JobDocument, {k: v for k, v in data.items() if k in ours}, source=f"job {job_id}", prefix="jobDocument"
        )
    except FleetLoopError as exc:
        raise JobRejected(str(exc)) from None


@dataclass
class JobOutcome:
    """How a job ended on this robot; ``details`` are strings (IoT Jobs ``statusDetails``)."""

    job_id: str
    status: Status
    reason: str
    role: Optional[str] = None
    version: Optional[str] = None  # the version serving that role after the job
    details: dict[str, str] = field(default_factory=dict)

    def status_details(self) -> dict[str, str]:
        """Return ``statusDetails``: reason, role, serving version and the figures (all strings)."""
        out = {"reason": self.reason[:1000]}
        if self.role:
            out["role"] = self.role
        if self.version:
            out["serving_version"] = self.version
        out.update({k: str(v)[:1000] for k, v in self.details.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["OPERATIONS", "JobDocument", "JobOutcome", "JobRejected", "ModelRef", "Status", "parse_job_document"]
