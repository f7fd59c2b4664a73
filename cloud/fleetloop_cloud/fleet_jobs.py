"""Jobs sent to the fleet: the job documents, how a model goes out, and what a job backend offers.

Every backend (``job_service_local``, ``job_service_mqtt``, ``job_service_aws``) is a :class:`FleetJobs`:
it creates a job for a list of things (AWS IoT also for a thing group), reports each thing's
execution as IoT Jobs statuses, and cancels what has not started. ``deploy.open_fleet_jobs`` picks
one by URI.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence
from urllib.parse import parse_qs, urlparse

from pydantic import Field

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import FleetLoopError
from fleetloop_core.contracts.job_document import JobDocument, ModelRef
from fleetloop_core.contracts.manifest import Manifest
from fleetloop_core.contracts.selection_job import SelectionJob
from fleetloop_core.model_store import PackageLocation
from fleetloop_core.signing import sign_document

FAILED_STATUSES = frozenset({"FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"})


class DeployError(FleetLoopError):
    """A job could not be created, read or canceled (the message names backend, job and cause)."""


class RolloutConfig(ConfigModel):
    """How a model goes out (config/deploy.yaml, section rollout)."""

    canary_count: int = Field(default=1, ge=1)  # k robots first
    max_canary_failures: int = Field(default=0, ge=0)  # more failed canaries than this: abort
    canary_timeout_s: float = Field(default=900.0, gt=0)  # a canary that has not reported by then failed
    fleet_timeout_s: float = Field(default=3600.0, gt=0)
    poll_s: float = Field(default=2.0, gt=0)
    abort_failure_percent: float = Field(default=10.0, gt=0, le=100)  # abortConfig.thresholdPercentage
    abort_min_executed: int = Field(default=5, ge=1)  # abortConfig.minNumberOfExecutedThings
    maximum_per_minute: int = Field(default=100, ge=1)  # jobExecutionsRolloutConfig
    in_progress_timeout_min: int = Field(default=30, ge=1)  # timeoutConfig (AWS marks TIMED_OUT)
    rollback_canaries: bool = True
    # a canary whose watch passed unjudged (it saw fewer than watchdog.min_frames, even after waiting
    # unjudged_after_s for them): proceed to the fleet phase (no evidence against it), or abort as if it
    # had failed (no evidence for it either; its robots roll back)
    unjudged_canaries: Literal["proceed", "abort"] = "proceed"


# ====================================================================================== documents
def deploy_document(
    manifest: Manifest, store_uri: str, prefix: str, manifest_bytes: bytes | None = None
) -> dict[str, Any]:
    """Return the job document deploying ``manifest``'s package from ``store_uri``/``prefix``.

    With ``manifest_bytes`` the document pins the manifest's sha256, so the robot installs exactly it.
    """
    sha256 = hashlib.sha256(manifest_bytes).hexdigest() if manifest_bytes is not None else None
    document = JobDocument(
        operation="fleetloop.deploy_model",
        model=ModelRef(name=manifest.name, version=manifest.version, tier=manifest.tier),
        package=PackageLocation(store=store_uri, prefix=prefix, manifest_sha256=sha256),
    )
    return document.model_dump(mode="json", exclude_none=True)


def rollback_document(name: str, tier: str, version: str = "previous") -> dict[str, Any]:
    """Return the job document rolling ``tier`` back to ``version`` (``previous``: the one served before)."""
    document = JobDocument(operation="fleetloop.rollback_model", model=ModelRef(name=name, version=version, tier=tier))
    return document.model_dump(mode="json", exclude_none=True)


def campaign_document(
    campaign: str,
    version: str,
    changes: dict[str, Any],
    expires_at: float,
    private_pem: bytes,
    reason: str = "",
) -> dict[str, Any]:
    """Return the signed data-campaign job document (``fleetloop.update_selection``, contracts.selection_job):
    selector ``changes`` until ``expires_at`` (Unix seconds), signed with the fleet's Ed25519 key."""
    document = SelectionJob(
        operation="fleetloop.update_selection",
        campaign=campaign,
        version=version,
        changes=changes,
        expires_at=expires_at,
        reason=reason,
    )
    return sign_document(document.model_dump(mode="json", exclude_none=True), private_pem)


# ====================================================================================== backends
@dataclass
class ExecutionState:
    """One robot's execution of a job: IoT Jobs status and statusDetails."""

    thing: str
    status: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in iot_jobs.TERMINAL


@dataclass(frozen=True)
class JobRequest:
    """One job as a backend receives it: id, things (or an AWS IoT thing group), document, rollout."""

    job_id: str
    things: list[str]
    document: dict[str, Any]
    rollout: RolloutConfig
    thing_group: Optional[str] = None


class FleetJobs(ABC):
    """What a rollout needs from a job backend: create jobs, read their executions, cancel them."""

    uri: str
    thing_groups = False  # whether create_job may target a thing group (only AWS IoT has them)

    def create_job(
        self,
        job_id: str,
        things: Sequence[str],
        document: dict[str, Any],
        rollout: RolloutConfig | None = None,
        thing_group: str | None = None,
    ) -> None:
        """Send ``document`` as job ``job_id`` to ``things`` (or to ``thing_group``)."""
        if thing_group is not None and not self.thing_groups:
            raise DeployError(f"{self.uri}: thing groups exist only on AWS IoT; list the things")
        self._submit(JobRequest(job_id, list(things), document, rollout or RolloutConfig(), thing_group))

    @abstractmethod
    def _submit(self, job: JobRequest) -> None:
        """Create ``job`` on the backend (DeployError when it cannot)."""

    @abstractmethod
    def executions(self, job_id: str) -> dict[str, ExecutionState]:
        """Return each target thing's execution of ``job_id``."""

    @abstractmethod
    def cancel_job(self, job_id: str, reason: str) -> Any:
        """Cancel the executions of ``job_id`` that have not started."""

    def wait_changed(self, timeout_s: float) -> None:
        """Block until some execution may have changed, at most ``timeout_s`` (a backend that is told wakes early)."""
        time.sleep(timeout_s)

    def close(self) -> None:
        """Release the backend's connections (nothing to release by default)."""
        return None


def uri_options(uri: str, options: dict[str, str]) -> dict[str, str]:
    """Return the query parameters of ``uri`` (the last of repeated ones), overridden by ``options``."""
    query = {k: v[-1] for k, v in parse_qs(urlparse(uri).query).items()}
    query.update(options)
    return query
