"""The production job backend: AWS IoT Jobs through boto3's ``iot`` client (``iot://?region=..&endpoint_url=..``).

A job targets things or a thing group and carries the rollout as AWS enforces it:
``jobExecutionsRolloutConfig``, ``abortConfig`` on a failure rate and ``timeoutConfig``.
"""

from __future__ import annotations

import json
from typing import Any

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.fleet_jobs import (
    FAILED_STATUSES,
    DeployError,
    ExecutionState,
    FleetJobs,
    JobRequest,
    RolloutConfig,
    uri_options,
)


class AwsIotJobs(FleetJobs):
    """AWS IoT Jobs (production) through boto3's ``iot`` client."""

    thing_groups = True

    def __init__(self, client=None, region: str | None = None, endpoint_url: str | None = None):
        import boto3

        self._client = client or boto3.client("iot", region_name=region or "us-east-1", endpoint_url=endpoint_url)
        self.uri = f"iot://{self._client.meta.region_name}"
        self._arns: dict[str, str] = {}

    @classmethod
    def from_uri(cls, uri: str, **options: str) -> "AwsIotJobs":
        query = uri_options(uri, options)
        unknown = set(query) - {"region", "endpoint_url"}
        if unknown:
            raise ConfigError(f"{uri}: unknown option(s) {sorted(unknown)} (known: endpoint_url, region)")
        return cls(region=query.get("region"), endpoint_url=query.get("endpoint_url"))

    def _call(self, action: str, job_id: str, **kwargs) -> dict[str, Any]:
        try:
            return getattr(self._client, action)(**kwargs)
        except Exception as exc:  # botocore raises ClientError, ParamValidationError, connection errors
            raise DeployError(f"{self.uri}: {action} for job {job_id} failed: {exc}") from exc

    def _thing_arn(self, thing: str) -> str:
        if thing not in self._arns:
            self._arns[thing] = self._call("describe_thing", "-", thingName=thing)["thingArn"]
        return self._arns[thing]

    @staticmethod
    def job_request(
        job_id: str, targets: list[str], document: dict[str, Any], rollout: RolloutConfig
    ) -> dict[str, Any]:
        """Return the ``create_job`` parameters (pure, so the request shape is testable on its own)."""
        return {
            "jobId": job_id,
            "targets": targets,
            "document": json.dumps(document, sort_keys=True),
            "description": f"FleetLoop {document.get('operation')} {document.get('model', {}).get('name')} "
            f"{document.get('model', {}).get('version')}"[:2028],
            "targetSelection": "SNAPSHOT",
            "jobExecutionsRolloutConfig": {"maximumPerMinute": rollout.maximum_per_minute},
            "abortConfig": {
                "criteriaList": [
                    {
                        "failureType": "ALL",
                        "action": "CANCEL",
                        "thresholdPercentage": float(rollout.abort_failure_percent),
                        "minNumberOfExecutedThings": int(rollout.abort_min_executed),
                    }
                ]
            },
            "timeoutConfig": {"inProgressTimeoutInMinutes": int(rollout.in_progress_timeout_min)},
        }

    def _submit(self, job: JobRequest) -> None:
        if job.thing_group is not None:
            group = self._call("describe_thing_group", job.job_id, thingGroupName=job.thing_group)
            targets = [group["thingGroupArn"]]
        else:
            targets = [self._thing_arn(thing) for thing in job.things]
        self._call("create_job", job.job_id, **self.job_request(job.job_id, targets, job.document, job.rollout))

    def executions(self, job_id: str) -> dict[str, ExecutionState]:
        states: dict[str, ExecutionState] = {}
        kwargs: dict[str, Any] = {"jobId": job_id}
        while True:
            page = self._call("list_job_executions_for_job", job_id, **kwargs)
            for item in page.get("executionSummaries", []):
                thing = item["thingArn"].rsplit("/", 1)[-1]
                status = item["jobExecutionSummary"]["status"]
                details: dict[str, str] = {}
                if status in FAILED_STATUSES or status == "SUCCEEDED":
                    execution = self._call("describe_job_execution", job_id, jobId=job_id, thingName=thing)
                    details = execution["execution"].get("statusDetails", {}).get("detailsMap", {})
                states[thing] = ExecutionState(thing, status, dict(details))
            if not page.get("nextToken"):
                return states
            kwargs["nextToken"] = page["nextToken"]

    def cancel_job(self, job_id: str, reason: str) -> None:
        self._call("cancel_job", job_id, jobId=job_id, reasonCode="FLEETLOOP_ABORT", comment=reason[:2028])
