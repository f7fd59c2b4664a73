"""The data-campaign job a robot understands (``fleetloop.update_selection``): the contract between the
cloud, which asks the fleet for the data it needs, and the robots' selectors.

A campaign is a signed IoT Jobs ``jobDocument``::

    {"operation": "fleetloop.update_selection", "campaign": "more-sandals", "version": "3",
     "changes": {"policy.name": "class_quota", "policy.params.shares": {"sandal": 0.4}},
     "expires_at": 1767225600.0, "reason": "sandal: 12 labels, field accuracy 0.41",
     "signature": {"algorithm": "ed25519", "key_id": "...", "value": "..."}}

``changes`` are selection keys exactly as ``ros2 param set`` and ``Selector.update`` take them
(dotted paths of ``config/selection.yaml``: policy, thresholds, class quotas or per-class weights,
budget share); ``expires_at`` is when the robot puts its previous selection back (Unix seconds).
The signature covers every other field (``fleetloop_core.signing.document_bytes``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from fleetloop_core.config import ConfigModel, validate
from fleetloop_core.contracts.job_document import JobRejected
from fleetloop_core.contracts.manifest import Signature
from fleetloop_core.errors import FleetLoopError

OPERATION = "fleetloop.update_selection"


class SelectionJob(ConfigModel):
    """A data campaign: selector changes until an expiry, signed by the fleet's key."""

    operation: Literal["fleetloop.update_selection"]
    campaign: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    changes: dict[str, Any] = Field(min_length=1)  # selection keys, as `ros2 param set` takes them
    expires_at: float = Field(gt=0)  # Unix seconds: the previous selection comes back then
    reason: str = ""  # why the cloud asks (shown in logs and the robot's report)
    signature: Optional[Signature] = None


def parse_selection_job(data: Any, job_id: str = "<job>") -> SelectionJob:
    """Return the validated campaign document; JobRejected naming the job, the field and the value otherwise."""
    if not isinstance(data, dict):
        raise JobRejected(f"job {job_id}: jobDocument must be a JSON object (got {type(data).__name__})")
    try:
        return validate(SelectionJob, data, source=f"job {job_id}", prefix="jobDocument")
    except FleetLoopError as exc:
        raise JobRejected(str(exc)) from None


__all__ = ["OPERATION", "SelectionJob", "parse_selection_job"]
