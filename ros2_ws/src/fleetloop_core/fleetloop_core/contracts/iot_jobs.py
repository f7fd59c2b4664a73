"""The AWS IoT Jobs MQTT protocol: topic names and JSON documents, as pure functions.

Used by the robot's MQTT control plane (``fleetloop_core.control_plane``) and by the cloud's local
job service (``fleetloop_cloud.job_service_mqtt``), so both sides speak exactly the documented protocol
(https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html):

    <prefix>/things/<thing>/jobs/notify-next                 service → device: next pending execution
    <prefix>/things/<thing>/jobs/start-next[/accepted|/rejected]   device claims the next execution
    <prefix>/things/<thing>/jobs/<jobId>/update[/accepted|/rejected]   device reports a status
    <prefix>/things/<thing>/jobs/get[/accepted|/rejected]     device lists pending executions
    <prefix>/things/<thing>/jobs/<jobId>/get[/accepted|/rejected]   device describes one execution

``prefix`` is ``$aws`` for AWS IoT Core and for mosquitto (which accepts ``$aws/...`` topics); it is
configurable for brokers that refuse ``$``-topics. Times are epoch seconds (int), as AWS sends them.

``statusDetails`` is a map of string to string, validated as the Jobs API validates it (key: 1-128
characters of ``[a-zA-Z0-9:_-]``; value: 1-1024 characters, no control characters): a device
sanitizes what it sends (:func:`status_details`), a service rejects what does not conform
(:func:`status_details_problem`). Every update carries ``expectedVersion``: the execution's
``versionNumber`` the device last saw; a stale one is answered ``VersionMismatch``.
"""

from __future__ import annotations

import re
import time
from typing import Any

DEFAULT_PREFIX = "$aws"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"})
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
STATUS_DETAIL_VALUE_MAX = 1024
STATUS_DETAIL_KEY_MAX = 128
_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_KEY_BAD = re.compile(r"[^a-zA-Z0-9:_-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# the error codes of the Jobs MQTT API reference ("Jobs device MQTT API", error responses)
ERROR_CODES = frozenset(
    {
        "InvalidTopic",
        "InvalidJson",
        "InvalidRequest",
        "InvalidStateTransition",
        "ResourceNotFound",
        "VersionMismatch",
        "InternalError",
        "RequestThrottled",
        "TerminalStateReached",
    }
)
NEXT = "$next"  # the job id DescribeJobExecution accepts for "the next pending execution"


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


def describe_topic(thing: str, job_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    if not job_id or any(c in job_id for c in "/+#"):
        raise ValueError(f"invalid job id {job_id!r}")
    return jobs_topic(thing, f"{job_id}/get", prefix)


def device_subscriptions(thing: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Return the topics a device subscribes to: notify-next and the answers to its requests."""
    return [
        jobs_topic(thing, suffix, prefix)
        for suffix in (
            "notify-next",
            "start-next/accepted",
            "start-next/rejected",
            "+/update/accepted",
            "+/update/rejected",
            "+/get/accepted",
            "+/get/rejected",
        )
    ]


def service_subscriptions(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Return the topics a job service subscribes to: every thing's StartNext, Update, GetPending, Describe."""
    return [f"{prefix}/things/+/jobs/{suffix}" for suffix in ("start-next", "+/update", "get", "+/get")]


def parse_jobs_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, list[str]]:
    """Return (thing, the parts after ``jobs/``) of a jobs topic; ValueError when it is not one."""
    head = f"{prefix}/things/"
    if not topic.startswith(head):
        raise ValueError(f"{topic}: not under {head}")
    parts = topic[len(head) :].split("/")
    if len(parts) < 3 or parts[1] != "jobs":
        raise ValueError(f"{topic}: not a jobs topic")
    return parts[0], parts[2:]


def now_s() -> int:
    """Return the current time in epoch seconds, as the Jobs service stamps documents."""
    return int(time.time())


def status_details(details: dict[str, Any]) -> dict[str, str]:
    """Return ``details`` as valid ``statusDetails`` (device side): keys cut to 128 characters of the
    allowed set, values stringified, control characters turned into spaces, cut to 1024; empty dropped."""
    out: dict[str, str] = {}
    for key, value in details.items():
        if value is None:
            continue
        key = _KEY_BAD.sub("_", str(key))[:STATUS_DETAIL_KEY_MAX]
        text = _CONTROL.sub(" ", str(value)).strip()[:STATUS_DETAIL_VALUE_MAX]
        if key and text:
            out[key] = text
    return out


def status_details_problem(details: Any) -> str | None:
    """Return why ``details`` is not valid ``statusDetails`` (service side), or None when it is."""
    if not isinstance(details, dict):
        return f"statusDetails must be an object of string to string (got {type(details).__name__})"
    for key, value in details.items():
        if not _KEY.fullmatch(key):
            return f"statusDetails key {key!r} must be 1-128 characters of [a-zA-Z0-9:_-]"
        if not isinstance(value, str):
            return f"statusDetails.{key} must be a string (got {type(value).__name__} {value!r})"
        if not 1 <= len(value) <= STATUS_DETAIL_VALUE_MAX:
            return f"statusDetails.{key} must be 1-{STATUS_DETAIL_VALUE_MAX} characters (got {len(value)})"
        if _CONTROL.search(value):
            return f"statusDetails.{key} contains control characters"
    return None


# ------------------------------------------------------------------------------ device → service
def start_next_request(
    client_token: str, details: dict[str, Any] | None = None, step_timeout_min: int | None = None
) -> dict[str, Any]:
    """Return a StartNextPendingJobExecution request."""
    request: dict[str, Any] = {"clientToken": client_token}
    if details:
        request["statusDetails"] = status_details(details)
    if step_timeout_min:
        request["stepTimeoutInMinutes"] = int(step_timeout_min)
    return request


def describe_request(
    client_token: str, execution_number: int | None = None, include_job_document: bool = True
) -> dict[str, Any]:
    """Return a DescribeJobExecution request."""
    request: dict[str, Any] = {"clientToken": client_token, "includeJobDocument": include_job_document}
    if execution_number is not None:
        request["executionNumber"] = int(execution_number)
    return request


def update_request(
    status: str,
    client_token: str,
    details: dict[str, Any] | None = None,
    expected_version: int | None = None,
    execution_number: int | None = None,
) -> dict[str, Any]:
    """Return an UpdateJobExecution request (status IN_PROGRESS, SUCCEEDED, FAILED or REJECTED)."""
    if status not in DEVICE_STATUSES:
        raise ValueError(f"status {status!r} is not one a device may set ({sorted(DEVICE_STATUSES)})")
    request: dict[str, Any] = {
        "status": status,
        "clientToken": client_token,
        "statusDetails": status_details(details or {}),
        "includeJobExecutionState": True,
    }
    if expected_version is not None:
        request["expectedVersion"] = int(expected_version)
    if execution_number is not None:
        request["executionNumber"] = int(execution_number)
    return request


# ------------------------------------------------------------------------------ service → device
def execution_data(
    thing: str,
    job_id: str,
    document: dict[str, Any],
    status: str,
    version_number: int,
    execution_number: int,
    queued_at: int,
    started_at: int | None,
    last_updated_at: int,
    details: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return a JobExecutionData object."""
    data: dict[str, Any] = {
        "jobId": job_id,
        "thingName": thing,
        "jobDocument": document,
        "status": status,
        "queuedAt": queued_at,
        "lastUpdatedAt": last_updated_at,
        "versionNumber": version_number,
        "executionNumber": execution_number,
    }
    if started_at is not None:
        data["startedAt"] = started_at
    if details:
        data["statusDetails"] = dict(details)
    return data


def error_response(
    code: str, message: str, client_token: str | None = None, execution_state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return a ``.../rejected`` payload (code: one of ERROR_CODES)."""
    if code not in ERROR_CODES:
        raise ValueError(f"{code!r} is not an IoT Jobs error code")
    payload: dict[str, Any] = {"code": code, "message": message, "timestamp": now_s()}
    if client_token:
        payload["clientToken"] = client_token
    if execution_state:
        payload["executionState"] = execution_state
    return payload
