"""The AWS IoT Jobs MQTT protocol: topic names and JSON documents, as pure functions.

Used by the robot's MQTT control plane (``fleetloop_core.control_plane``) and by the cloud's local
job service (``fleetloop_cloud.deploy``), so both sides speak exactly the documented protocol
(https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html):

    <prefix>/things/<thing>/jobs/notify-next                 service → device: next pending execution
    <prefix>/things/<thing>/jobs/start-next[/accepted|/rejected]   device claims the next execution
    <prefix>/things/<thing>/jobs/<jobId>/update[/accepted|/rejected]   device reports a status
    <prefix>/things/<thing>/jobs/get[/accepted|/rejected]     device lists pending executions

``prefix`` is ``$aws`` for AWS IoT Core and for mosquitto (which accepts ``$aws/...`` topics); it is
configurable for brokers that refuse ``$``-topics. Times are epoch seconds (int), as AWS sends them.
``statusDetails`` values are strings.
"""

from __future__ import annotations

import time
from typing import Any

DEFAULT_PREFIX = "$aws"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"})
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
STATUS_DETAIL_VALUE_MAX = 1024


def jobs_topic(thing: str, suffix: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return ``<prefix>/things/<thing>/jobs/<suffix>``."""
    if not thing or any(c in thing for c in "/+#"):
        raise ValueError(f"invalid thing name {thing!r}")
    return f"{prefix}/things/{thing}/jobs/{suffix}"


def notify_next_topic(thing: str, prefix: str = DEFAULT_PREFIX) -> str:
    return jobs_topic(thing, "notify-next", prefix)


def start_next_topic(thing: str, prefix: str = DEFAULT_PREFIX) -> str:
    return jobs_topic(thing, "start-next", prefix)


def update_topic(thing: str, job_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    if not job_id or any(c in job_id for c in "/+#"):
        raise ValueError(f"invalid job id {job_id!r}")
    return jobs_topic(thing, f"{job_id}/update", prefix)


def get_topic(thing: str, prefix: str = DEFAULT_PREFIX) -> str:
    return jobs_topic(thing, "get", prefix)


def parse_jobs_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, list[str]]:
    """Return (thing, the parts after ``jobs/``) of a jobs topic; ValueError when it is not one."""
    head = f"{prefix}/things/"
    if not topic.startswith(head):
        raise ValueError(f"{topic}: not under {head}")
    parts = topic[len(head):].split("/")
    if len(parts) < 3 or parts[1] != "jobs":
        raise ValueError(f"{topic}: not a jobs topic")
    return parts[0], parts[2:]


def now_s() -> int:
    """Return the current time in epoch seconds, as the Jobs service stamps documents."""
    return int(time.time())


def status_details(details: dict[str, Any]) -> dict[str, str]:
    """Return ``details`` as IoT Jobs ``statusDetails``: string keys and values, values cut to 1024 chars."""
    return {str(k): str(v)[:STATUS_DETAIL_VALUE_MAX] for k, v in details.items() if v is not None and str(v) != ""}


# ------------------------------------------------------------------------------ device → service
def start_next_request(client_token: str, details: dict[str, Any] | None = None,
                       step_timeout_min: int | None = None) -> dict[str, Any]:
    """Return a StartNextPendingJobExecution request."""
    request: dict[str, Any] = {"clientToken": client_token}
    if details:
        request["statusDetails"] = status_details(details)
    if step_timeout_min:
        request["stepTimeoutInMinutes"] = int(step_timeout_min)
    return request


def update_request(status: str, client_token: str, details: dict[str, Any] | None = None,
                   expected_version: int | None = None, execution_number: int | None = None) -> dict[str, Any]:
    """Return an UpdateJobExecution request (status IN_PROGRESS, SUCCEEDED, FAILED or REJECTED)."""
    if status not in DEVICE_STATUSES:
        raise ValueError(f"status {status!r} is not one a device may set ({sorted(DEVICE_STATUSES)})")
    request: dict[str, Any] = {"status": status, "clientToken": client_token,
                               "statusDetails": status_details(details or {}),
                               "includeJobExecutionState": True}
    if expected_version is not None:
        request["expectedVersion"] = int(expected_version)
    if execution_number is not None:
        request["executionNumber"] = int(execution_number)
    return request


# ------------------------------------------------------------------------------ service → device
def execution_data(thing: str, job_id: str, document: dict[str, Any], status: str, version_number: int,
                   execution_number: int, queued_at: int, started_at: int | None, last_updated_at: int,
                   details: dict[str, str] | None = None) -> dict[str, Any]:
    """Return a JobExecutionData object."""
    data: dict[str, Any] = {"jobId": job_id, "thingName": thing, "jobDocument": document, "status": status,
                            "queuedAt": queued_at, "lastUpdatedAt": last_updated_at,
                            "versionNumber": version_number, "executionNumber": execution_number}
    if started_at is not None:
        data["startedAt"] = started_at
    if details:
        data["statusDetails"] = dict(details)
    return data


def error_response(code: str, message: str, client_token: str | None = None,
                   execution_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a ``.../rejected`` payload (code: InvalidRequest, VersionMismatch, InvalidStateTransition, ...)."""
    payload: dict[str, Any] = {"code": code, "message": message, "timestamp": now_s()}
    if client_token:
        payload["clientToken"] = client_token
    if execution_state:
        payload["executionState"] = execution_state
    return payload
