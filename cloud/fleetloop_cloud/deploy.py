"""Fleet rollout of a signed model package: canaries first, then the fleet, or abort and roll back.

Job backends behind one small interface (:class:`FleetJobs`), picked by URI (:func:`open_fleet_jobs`):

* ``file:///dir``   the local job directory the robots' ``local`` control plane watches (embedded default)
* ``mqtts://host:port``   :class:`MqttJobService`, a small job service of our own speaking the AWS IoT
  Jobs MQTT protocol (``fleetloop_core.iot_jobs``) over a real broker with mutual TLS
* ``iot://`` (``?region=..&endpoint_url=..``)   AWS IoT Jobs via boto3 ``iot.create_job``: thing or
  thing-group targets, the job document with the package location, ``jobExecutionsRolloutConfig``,
  ``abortConfig`` on a failure rate and ``timeoutConfig``

:func:`rollout`: a canary job to ``k`` robots; wait for their reports; if more canaries failed than
allowed, cancel, send a rollback job to every canary that took the model, and stop — the package
never reaches the others. Otherwise a fleet job to the rest, watched with the same abort rule the
job carries for AWS IoT (failure percentage after a minimum of finished executions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence
from urllib.parse import parse_qs, unquote, urlparse

from pydantic import Field

from fleetloop_core import iot_jobs
from fleetloop_core.config import ConfigModel, default_config_path, load_config
from fleetloop_core.control_plane import write_json_atomic
from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.manifest import MANIFEST_NAME, Manifest
from fleetloop_core.job_document import JobDocument, ModelRef
from fleetloop_core.model_store import PackageLocation

from fleetloop_cloud.job_store import JobStore, JobStoreError

log = logging.getLogger(__name__)

FAILED_STATUSES = frozenset({"FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"})


class DeployError(FleetLoopError):
    """A job could not be created, read or canceled (the message names backend, job and cause)."""


# ====================================================================================== config
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


class DeployConfig(ConfigModel):
    """Backend and rollout."""

    backend: str = "file:///var/lib/fleetloop/jobs"
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)


def load_deploy_config(path: str | Path | None = None) -> DeployConfig:
    """Return config/deploy.yaml (or ``path``) validated."""
    return load_config(DeployConfig, path or default_config_path("deploy.yaml"))


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


def deploy_approved(
    jobs: FleetJobs,
    registry_store,
    store_uri: str,
    robots: Sequence[str],
    entries: Sequence[dict[str, Any]],
    job_prefix: str,
    config: RolloutConfig | None = None,
) -> list[dict[str, Any]]:
    """Roll out a round's Approved edge packages (T4 first, then T3; canaries first) to ``robots``.

    ``entries``: the round's registry entries (``name``, ``version``, ``variant``, ``status``);
    ``registry_store``: the store the registry keeps packages in (``store_uri``), read for the manifest the
    job pins. Returns one record per rollout: round tier, version, aborted, seconds and the report.
    """
    from fleetloop_core.manifest import parse_manifest

    records = []
    approved = [e for e in entries if e.get("status") == "Approved" and e.get("variant") in ("T4", "T3")]
    for entry in sorted(approved, key=lambda e: e["variant"], reverse=True):
        prefix = f"models/{entry['name']}/{entry['version']}"
        manifest_bytes = registry_store.get_bytes(f"{prefix}/{MANIFEST_NAME}")
        manifest = parse_manifest(json.loads(manifest_bytes), f"{store_uri}/{prefix}")
        job_id = f"{job_prefix}-{entry['variant']}-{entry['version']}".replace(".", "-")
        started = time.perf_counter()
        record = {"tier": entry["variant"], "version": entry["version"]}
        try:
            report = rollout(jobs, robots, deploy_document(manifest, store_uri, prefix, manifest_bytes), job_id, config)
            record.update(aborted=bool(report.aborted), report=report.to_dict())
        except FleetLoopError as exc:
            log.error("rollout of %s failed: %s", job_id, exc)
            record.update(aborted=True, error=str(exc))
        record["seconds"] = round(time.perf_counter() - started, 2)
        records.append(record)
    return records


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


class FleetJobs(Protocol):
    """What a rollout needs from a job backend."""

    uri: str

    def create_job(
        self,
        job_id: str,
        things: Sequence[str],
        document: dict[str, Any],
        rollout: RolloutConfig | None = None,
        thing_group: str | None = None,
    ) -> None: ...
    def executions(self, job_id: str) -> dict[str, ExecutionState]: ...
    def cancel_job(self, job_id: str, reason: str) -> None: ...
    def close(self) -> None: ...


class LocalDirJobs:
    """Jobs as files in the directory the robots' local control plane watches."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.uri = f"file://{self.directory}"
        self._targets: dict[str, list[str]] = {}

    def create_job(
        self,
        job_id: str,
        things: Sequence[str],
        document: dict[str, Any],
        rollout: RolloutConfig | None = None,
        thing_group: str | None = None,
    ) -> None:
        if thing_group is not None:
            raise DeployError(f"{self.uri}: thing groups exist only on AWS IoT; list the things")
        for thing in things:
            for state in ("queued", "in_progress", "done"):
                if (self.directory / thing / state / f"{job_id}.json").exists():
                    raise DeployError(f"{self.uri}: job {job_id} exists already for {thing}")
        for thing in things:
            write_json_atomic(
                self.directory / thing / "queued" / f"{job_id}.json",
                {
                    "jobId": job_id,
                    "thingName": thing,
                    "jobDocument": document,
                    "status": "QUEUED",
                    "queuedAt": iot_jobs.now_s(),
                    "versionNumber": 1,
                    "executionNumber": 1,
                },
            )
        self._targets[job_id] = list(things)

    def _things(self, job_id: str) -> list[str]:
        if job_id in self._targets:
            return self._targets[job_id]
        return sorted(p.parent.parent.name for p in self.directory.glob(f"*/*/{job_id}.json"))

    def executions(self, job_id: str) -> dict[str, ExecutionState]:
        states = {}
        for thing in self._things(job_id):
            status_path = self.directory / thing / "status" / f"{job_id}.json"
            if status_path.exists():
                data = json.loads(status_path.read_text())
                states[thing] = ExecutionState(thing, data["status"], data.get("statusDetails", {}))
            elif (self.directory / thing / "queued" / f"{job_id}.json").exists():
                states[thing] = ExecutionState(thing, "QUEUED")
            elif (self.directory / thing / "in_progress" / f"{job_id}.json").exists():
                states[thing] = ExecutionState(thing, "IN_PROGRESS")  # claimed, first status not written yet
            else:
                states[thing] = ExecutionState(thing, "REMOVED", {"reason": "job file gone without a status"})
        return states

    def cancel_job(self, job_id: str, reason: str) -> None:
        for thing in self._things(job_id):
            queued = self.directory / thing / "queued" / f"{job_id}.json"
            try:
                queued.unlink()
            except FileNotFoundError:
                continue
            write_json_atomic(
                self.directory / thing / "status" / f"{job_id}.json",
                {
                    "jobId": job_id,
                    "thingName": thing,
                    "status": "CANCELED",
                    "statusDetails": {"reason": reason},
                    "lastUpdatedAt": iot_jobs.now_s(),
                },
            )

    def close(self) -> None:
        pass


class StoreJobs:
    """A rollout's view of a job store that a standing ``fleetloop-cloud jobs serve`` answers from."""

    def __init__(self, store: JobStore):
        self.store = store
        self.uri = f"jobs://{store.path}"

    @classmethod
    def from_uri(cls, uri: str, **_options: str) -> "StoreJobs":
        path = unquote(urlparse(uri).path)
        if not path:
            raise ConfigError(f"{uri}: a job store URI names the store file (jobs:///var/lib/fleetloop/jobs.sqlite)")
        return cls(JobStore(path))

    def create_job(
        self,
        job_id: str,
        things: Sequence[str],
        document: dict[str, Any],
        rollout: RolloutConfig | None = None,
        thing_group: str | None = None,
    ) -> None:
        if thing_group is not None:
            raise DeployError(f"{self.uri}: thing groups exist only on AWS IoT; list the things")
        try:
            self.store.create_job(job_id, things, document)
        except JobStoreError as exc:
            raise DeployError(f"{self.uri}: {exc}") from None

    def executions(self, job_id: str) -> dict[str, ExecutionState]:
        return {e.thing: ExecutionState(e.thing, e.status, dict(e.details)) for e in self.store.of_job(job_id)}

    def cancel_job(self, job_id: str, reason: str) -> list[str]:
        """Cancel the QUEUED executions (IN_PROGRESS ones finish, as with IoT Jobs without force)."""
        return self.store.cancel_job(job_id, reason)

    def close(self) -> None:
        self.store.close()


class MqttJobService(StoreJobs):
    """Our own IoT Jobs service over an MQTT 5 broker: answers start-next, update, get and describe from a
    :class:`~fleetloop_cloud.job_store.JobStore` and sends notify-next.

    With a store file it is a standing service (``fleetloop-cloud jobs serve``): executions survive
    its restarts, and jobs that a rollout writes into the same file (``--backend jobs://PATH``) are
    announced to their robots within ``watch_s``. Without one it lives inside a rollout.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ca_file: str,
        cert_file: str,
        key_file: str,
        topic_prefix: str = iot_jobs.DEFAULT_PREFIX,
        client_id: str | None = None,
        connect_timeout_s: float = 10.0,
        store: JobStore | None = None,
        watch_s: float = 0.25,
    ):
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        super().__init__(store or JobStore())
        self.host, self.port, self.prefix = host, int(port), topic_prefix
        self.uri = f"mqtts://{host}:{port}"
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._subscribed = threading.Event()
        self._stopped = threading.Event()
        self._closing = threading.Event()
        self._announced: dict[str, Optional[tuple[str, str]]] = {}  # thing -> (job, status) last notified
        self.requests: list[tuple[str, str]] = []  # (thing, request kind) seen, for reports
        self.received: list[tuple[str, dict[str, Any]]] = []  # (topic, payload) of every request, for audits
        self._client = mqtt5_client_builder.mtls_from_path(
            endpoint=host,
            port=self.port,
            cert_filepath=cert_file,
            pri_key_filepath=key_file,
            ca_filepath=ca_file,
            client_id=client_id or f"fleetloop-jobs-{uuid.uuid4().hex[:8]}",
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            min_reconnect_delay_ms=200,
            max_reconnect_delay_ms=5000,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_connected,
            on_lifecycle_stopped=lambda _e: self._stopped.set(),
        )
        self._client.start()
        if not self._subscribed.wait(connect_timeout_s):
            self.close()
            raise DeployError(f"{self.uri}: job service could not connect and subscribe within {connect_timeout_s} s")
        self._watcher = None
        if self.store.path != ":memory:":
            self._watcher = threading.Thread(target=self._watch, args=(watch_s,), name="job-store-watch", daemon=True)
            self._watcher.start()

    @classmethod
    def from_uri(cls, uri: str, **options: str) -> "MqttJobService":
        parsed = urlparse(uri)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        query.update(options)
        missing = [k for k in ("ca_file", "cert_file", "key_file") if k not in query]
        if missing:
            raise ConfigError(f"{uri}: mqtts job backend needs {', '.join(missing)}")
        store = JobStore(query["store"]) if query.get("store") else None
        return cls(
            parsed.hostname or "127.0.0.1",
            parsed.port or 8883,
            query["ca_file"],
            query["cert_file"],
            query["key_file"],
            query.get("topic_prefix", iot_jobs.DEFAULT_PREFIX),
            store=store,
        )

    # ------------------------------------------------------------------ mqtt plumbing
    def _on_connected(self, _event) -> None:
        from awscrt import mqtt5

        topics = iot_jobs.service_subscriptions(self.prefix)
        future = self._client.subscribe(
            mqtt5.SubscribePacket([mqtt5.Subscription(t, mqtt5.QoS.AT_LEAST_ONCE) for t in topics])
        )

        def done(f) -> None:
            try:
                codes = f.result().reason_codes
            except Exception as exc:
                log.warning("job service: subscribe failed (%s)", exc)
                return
            if all(int(c) < 0x80 for c in codes):
                self._subscribed.set()
                for thing in self.store.things_with_pending():  # robots that asked while we were away
                    self._notify_next(thing)
            else:
                log.error("job service: broker refused subscriptions %s (%s)", topics, codes)

        future.add_done_callback(done)

    def _watch(self, period_s: float) -> None:
        """Announce what another process (a rollout) wrote into the store: notify-next per changed thing."""
        version = self.store.data_version()
        while not self._closing.wait(period_s):
            try:
                now = self.store.data_version()
                if now == version:
                    continue
                version = now
                with self._lock:
                    self._changed.notify_all()
                for thing in set(self.store.things_with_pending()) | {t for t, a in self._announced.items() if a}:
                    execution = self.store.next_pending(thing)
                    if self._announced.get(thing) != (execution and (execution.job_id, execution.status)):
                        self._notify_next(thing)
            except Exception:  # the service must outlive one bad read
                log.exception("job service: watching %s failed", self.store.path)

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        from awscrt import mqtt5

        client = self._client
        if client is not None:
            client.publish(
                mqtt5.PublishPacket(
                    topic=topic, payload=json.dumps(payload).encode("utf-8"), qos=mqtt5.QoS.AT_LEAST_ONCE
                )
            )

    def _topic(self, thing: str, suffix: str) -> str:
        return iot_jobs.jobs_topic(thing, suffix, self.prefix)

    def _on_publish(self, data) -> None:
        packet = data.publish_packet
        try:
            thing, rest = iot_jobs.parse_jobs_topic(packet.topic, self.prefix)
            payload = json.loads(bytes(packet.payload).decode("utf-8")) if packet.payload else {}
            if not isinstance(payload, dict):
                raise ValueError("payload is not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("job service: ignoring %s (%s)", packet.topic, exc)
            return
        token = payload.get("clientToken")
        with self._lock:
            self.received.append((packet.topic, payload))
        try:
            if rest == ["start-next"]:
                self._start_next(thing, payload, token)
            elif len(rest) == 2 and rest[1] == "update":
                self._update(thing, rest[0], payload, token)
            elif rest == ["get"]:
                self._get(thing, token)
            elif len(rest) == 2 and rest[1] == "get":
                self._describe(thing, rest[0], payload, token)
        except Exception:  # one bad request must not stop the service
            log.exception("job service: failed to handle %s", packet.topic)

    # ------------------------------------------------------------------ protocol
    def _notify_next(self, thing: str) -> None:
        execution = self.store.next_pending(thing)
        payload: dict[str, Any] = {"timestamp": iot_jobs.now_s()}
        if execution is not None:
            payload["execution"] = execution.data()
        self._announced[thing] = (execution.job_id, execution.status) if execution is not None else None
        self._publish(self._topic(thing, "notify-next"), payload)

    def _start_next(self, thing: str, payload: dict[str, Any], token: str | None) -> None:
        self.requests.append((thing, "start-next"))
        response: dict[str, Any] = {"timestamp": iot_jobs.now_s()}
        if token:
            response["clientToken"] = token
        with self.store.transaction():
            execution = self.store.next_pending(thing)
            if execution is not None and execution.status == "QUEUED":
                execution.status = "IN_PROGRESS"
                execution.started_at = execution.last_updated_at = iot_jobs.now_s()
                execution.version_number += 1
                if payload.get("statusDetails") and not iot_jobs.status_details_problem(payload["statusDetails"]):
                    execution.details = dict(payload["statusDetails"])
                self.store.put(execution)
        if execution is not None:
            response["execution"] = execution.data()
            self._announced[thing] = (execution.job_id, execution.status)
        with self._lock:
            self._changed.notify_all()
        self._publish(self._topic(thing, "start-next/accepted"), response)

    def _update(self, thing: str, job_id: str, payload: dict[str, Any], token: str | None) -> None:
        self.requests.append((thing, f"update:{payload.get('status')}"))
        status = payload.get("status")
        with self.store.transaction():
            execution = self.store.get(thing, job_id)
            error = None
            if execution is None:
                error = ("ResourceNotFound", f"no execution of job {job_id} for {thing}")
            elif status not in iot_jobs.DEVICE_STATUSES:
                error = ("InvalidRequest", f"status {status!r} is not one a device may set")
            elif execution.terminal:
                # the Jobs API: SUCCEEDED -> IN_PROGRESS and the like are InvalidStateTransition
                error = (
                    "InvalidStateTransition",
                    f"job {job_id} is already {execution.status} on {thing}; it cannot become {status}",
                )
            elif payload.get("expectedVersion") is not None and str(payload["expectedVersion"]) != str(
                execution.version_number
            ):
                error = (
                    "VersionMismatch",
                    f"expected version {payload['expectedVersion']}, current {execution.version_number}",
                )
            details = payload.get("statusDetails") or {}
            if error is None:
                problem = iot_jobs.status_details_problem(details)
                if problem:
                    error = ("InvalidRequest", problem)
            if error is None:
                execution.status = status
                if details:  # as IoT Jobs: statusDetails given replace the old ones, absent keep them
                    execution.details = dict(details)
                execution.version_number += 1
                execution.last_updated_at = iot_jobs.now_s()
                self.store.put(execution)
        if error is not None:
            response = iot_jobs.error_response(
                *error, client_token=token, execution_state=execution.state() if execution else None
            )
            self._publish(self._topic(thing, f"{job_id}/update/rejected"), response)
            return
        response = {"timestamp": iot_jobs.now_s()}
        if payload.get("includeJobExecutionState"):
            response["executionState"] = execution.state()
        if payload.get("includeJobDocument"):
            response["jobDocument"] = execution.document
        if token:
            response["clientToken"] = token
        with self._lock:
            self._changed.notify_all()
        self._publish(self._topic(thing, f"{job_id}/update/accepted"), response)
        if execution.terminal:
            self._notify_next(thing)

    def _get(self, thing: str, token: str | None) -> None:
        self.requests.append((thing, "get"))
        summaries: dict[str, list] = {"inProgressJobs": [], "queuedJobs": []}
        for e in self.store.pending(thing):
            key = "inProgressJobs" if e.status == "IN_PROGRESS" else "queuedJobs"
            summaries[key].append(
                {
                    "jobId": e.job_id,
                    "queuedAt": e.queued_at,
                    "lastUpdatedAt": e.last_updated_at,
                    "versionNumber": e.version_number,
                    "executionNumber": e.execution_number,
                }
            )
        response = {**summaries, "timestamp": iot_jobs.now_s()}
        if token:
            response["clientToken"] = token
        self._publish(self._topic(thing, "get/accepted"), response)

    def _describe(self, thing: str, job_id: str, payload: dict[str, Any], token: str | None) -> None:
        """DescribeJobExecution: one execution (``$next``: the next pending one), with its document
        unless ``includeJobDocument`` is false."""
        self.requests.append((thing, "describe"))
        execution = self.store.next_pending(thing) if job_id == iot_jobs.NEXT else self.store.get(thing, job_id)
        number = payload.get("executionNumber")
        if execution is not None and number is not None and str(number) != str(execution.execution_number):
            execution = None
        if execution is None or execution.terminal:
            # the Jobs API answers a describe of a finished execution with TerminalStateReached
            response = iot_jobs.error_response(
                "TerminalStateReached" if execution is not None else "ResourceNotFound",
                f"job {job_id} is {execution.status} on {thing}"
                if execution is not None
                else f"no execution of job {job_id} for {thing}",
                client_token=token,
                execution_state=execution.state() if execution is not None else None,
            )
            self._publish(self._topic(thing, f"{job_id}/get/rejected"), response)
            return
        data = execution.data()
        if payload.get("includeJobDocument") is False:
            data.pop("jobDocument", None)
        response = {"execution": data, "timestamp": iot_jobs.now_s()}
        if token:
            response["clientToken"] = token
        self._publish(self._topic(thing, f"{job_id}/get/accepted"), response)

    # ------------------------------------------------------------------ FleetJobs
    def create_job(
        self,
        job_id: str,
        things: Sequence[str],
        document: dict[str, Any],
        rollout: RolloutConfig | None = None,
        thing_group: str | None = None,
    ) -> None:
        super().create_job(job_id, things, document, rollout, thing_group)
        for thing in things:
            self._notify_next(thing)

    def wait_changed(self, timeout_s: float) -> None:
        """Block until some execution changes or ``timeout_s`` passes."""
        with self._lock:
            self._changed.wait(timeout_s)

    def cancel_job(self, job_id: str, reason: str) -> list[str]:
        touched = super().cancel_job(job_id, reason)
        with self._lock:
            self._changed.notify_all()
        for thing in touched:
            self._notify_next(thing)
        return touched

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(5)
        client, self._client = self._client, None
        if client is not None:
            client.stop()
            self._stopped.wait(5)


class AwsIotJobs:
    """AWS IoT Jobs (production) through boto3's ``iot`` client."""

    def __init__(self, client=None, region: str | None = None, endpoint_url: str | None = None):
        import boto3

        self._client = client or boto3.client("iot", region_name=region or "us-east-1", endpoint_url=endpoint_url)
        self.uri = f"iot://{self._client.meta.region_name}"
        self._arns: dict[str, str] = {}

    @classmethod
    def from_uri(cls, uri: str, **options: str) -> "AwsIotJobs":
        query = {k: v[-1] for k, v in parse_qs(urlparse(uri).query).items()}
        query.update(options)
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

    def create_job(
        self,
        job_id: str,
        things: Sequence[str],
        document: dict[str, Any],
        rollout: RolloutConfig | None = None,
        thing_group: str | None = None,
    ) -> None:
        if thing_group is not None:
            group = self._call("describe_thing_group", job_id, thingGroupName=thing_group)
            targets = [group["thingGroupArn"]]
        else:
            targets = [self._thing_arn(thing) for thing in things]
        self._call("create_job", job_id, **self.job_request(job_id, targets, document, rollout or RolloutConfig()))

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

    def close(self) -> None:
        pass


def _local(uri: str, **_options: str) -> LocalDirJobs:
    return LocalDirJobs(unquote(urlparse(uri).path))


JOB_BACKENDS: dict[str, Callable[..., FleetJobs]] = {
    "file": _local,
    "mqtts": MqttJobService.from_uri,
    "jobs": StoreJobs.from_uri,
    "iot": AwsIotJobs.from_uri,
}


def open_fleet_jobs(uri: str, source: str = "deploy.backend", **options: str) -> FleetJobs:
    """Return the job backend for ``uri`` (file:///dir, mqtts://host:port?ca_file=..., iot://?region=...)."""
    scheme = urlparse(uri).scheme
    factory = JOB_BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(f"{source}: {uri!r} has unknown scheme {scheme!r} (known: {', '.join(sorted(JOB_BACKENDS))})")
    return factory(uri, **options)


# ====================================================================================== rollout
@dataclass
class PhaseReport:
    """One job of a rollout: its id, targets and how each robot ended."""

    job_id: str
    things: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def failed(self) -> list[str]:
        return [t for t, r in self.results.items() if r["status"] != "SUCCEEDED"]

    def succeeded(self) -> list[str]:
        return [t for t, r in self.results.items() if r["status"] == "SUCCEEDED"]


@dataclass
class RolloutReport:
    """What a rollout did: phases, whether it aborted and why, which canaries were rolled back."""

    model: dict[str, str]
    canary: Optional[PhaseReport] = None
    fleet: Optional[PhaseReport] = None
    rollback: Optional[PhaseReport] = None
    aborted: bool = False
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        return not self.aborted and self.fleet is not None and not self.fleet.failed()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["succeeded"] = self.succeeded
        return data


def wait_for_reports(
    jobs: FleetJobs,
    job_id: str,
    things: Sequence[str],
    timeout_s: float,
    poll_s: float,
    abort: RolloutConfig | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, ExecutionState], str]:
    """Wait until every thing's execution is terminal; return the states and an abort reason ('' if none).

    With ``abort`` the job is canceled as soon as its failure percentage reaches
    ``abort_failure_percent`` after ``abort_min_executed`` finished executions (IoT ``abortConfig``).
    """
    deadline = clock() + timeout_s
    while True:
        states = jobs.executions(job_id)
        finished = [s for t, s in states.items() if t in things and s.terminal]
        if abort is not None and len(finished) >= min(abort.abort_min_executed, len(things)):
            failures = sum(1 for s in finished if s.status in FAILED_STATUSES)
            percent = 100.0 * failures / len(finished)
            if failures and percent >= abort.abort_failure_percent:
                reason = (
                    f"job {job_id}: {failures} of {len(finished)} finished executions failed "
                    f"({percent:.0f} % >= {abort.abort_failure_percent} %)"
                )
                jobs.cancel_job(job_id, reason)
                return jobs.executions(job_id), reason
        if len(finished) == len(things):
            return states, ""
        if clock() >= deadline:
            return (
                states,
                f"job {job_id}: {len(things) - len(finished)} of {len(things)} robots did not report "
                f"within {timeout_s:.0f} s",
            )
        waiter = getattr(jobs, "wait_changed", None)
        if waiter is not None:
            waiter(min(poll_s, max(0.0, deadline - clock())))
        else:
            time.sleep(min(poll_s, max(0.0, deadline - clock())))


def _results(states: dict[str, ExecutionState], things: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for thing in things:
        state = states.get(thing)
        status = state.status if state is not None and state.terminal else "TIMED_OUT"
        out[thing] = {
            "status": status,
            "details": dict(state.details) if state else {},
            "reported": state.status if state else "NONE",
        }
    return out


def rollout(
    jobs: FleetJobs,
    fleet: Sequence[str],
    document: dict[str, Any],
    job_id: str,
    config: RolloutConfig | None = None,
    canaries: Sequence[str] | None = None,
    previous_version: str = "previous",
    fleet_group: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RolloutReport:
    """Deploy ``document`` to ``fleet``: canaries, then the rest; or abort and roll the canaries back.

    ``fleet_group`` (AWS IoT only) targets the fleet phase at a thing group instead of the list;
    the canaries are in it too and answer SUCCEEDED without a reload (the version already serves).
    """
    config = config or RolloutConfig()
    say = progress or (lambda message: log.info("%s", message))
    fleet = list(fleet)
    canaries = list(canaries) if canaries is not None else fleet[: config.canary_count]
    unknown = [c for c in canaries if c not in fleet]
    if unknown:
        raise DeployError(f"canaries {unknown} are not in the fleet")
    rest = [t for t in fleet if t not in canaries]
    report = RolloutReport(model={k: str(v) for k, v in document.get("model", {}).items()})

    started = time.monotonic()
    canary = PhaseReport(f"{job_id}-canary", canaries)
    jobs.create_job(canary.job_id, canaries, document, config)
    say(f"canary job {canary.job_id} sent to {', '.join(canaries)}")
    states, late = wait_for_reports(jobs, canary.job_id, canaries, config.canary_timeout_s, config.poll_s)
    canary.results, canary.seconds = _results(states, canaries), time.monotonic() - started
    report.canary = canary
    failed = canary.failed()
    if late or len(failed) > config.max_canary_failures:
        reasons = "; ".join(
            f"{t}: {canary.results[t]['status']} {canary.results[t]['details'].get('reason', '')}" for t in failed
        )
        report.aborted = True
        report.reason = (
            f"canary failed ({len(failed)} of {len(canaries)} > {config.max_canary_failures} allowed"
            f"{'; ' + late if late else ''}): {reasons}"
        )
        say(f"abort: {report.reason}")
        jobs.cancel_job(canary.job_id, report.reason)
        took = canary.succeeded()
        if took and config.rollback_canaries:
            model = document["model"]
            back = PhaseReport(f"{job_id}-rollback", took)
            jobs.create_job(
                back.job_id, took, rollback_document(model["name"], model["tier"], previous_version), config
            )
            say(f"rollback job {back.job_id} sent to {', '.join(took)}")
            started = time.monotonic()
            states, _ = wait_for_reports(jobs, back.job_id, took, config.canary_timeout_s, config.poll_s)
            back.results, back.seconds = _results(states, took), time.monotonic() - started
            report.rollback = back
        return report

    say(f"canaries succeeded: {', '.join(canaries)}")
    if not rest and fleet_group is None:
        report.reason = "fleet is the canaries"
        report.fleet = PhaseReport(f"{job_id}-fleet", [])
        return report
    started = time.monotonic()
    phase = PhaseReport(f"{job_id}-fleet", rest)
    jobs.create_job(phase.job_id, rest, document, config, thing_group=fleet_group)
    say(f"fleet job {phase.job_id} sent to {fleet_group or ', '.join(rest)}")
    states, reason = wait_for_reports(jobs, phase.job_id, rest, config.fleet_timeout_s, config.poll_s, abort=config)
    phase.results, phase.seconds = _results(states, rest), time.monotonic() - started
    report.fleet = phase
    if reason:
        report.aborted, report.reason = True, reason
        say(f"abort: {reason}")
    return report


# ====================================================================================== CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop-cloud deploy publish|rollout``."""
    parser = subparsers.add_parser("deploy", help="publish signed model packages and roll them out to the fleet")
    actions = parser.add_subparsers(dest="deploy_command", metavar="ACTION")
    publish = actions.add_parser("publish", help="upload a signed package to models/<name>/<version>/ in a store")
    publish.add_argument("package", help="package directory (signed manifest.json + files)")
    publish.add_argument("--store", required=True, help="object store URI (file:///dir or s3://bucket/prefix)")
    publish.add_argument("--trusted", required=True, help="trusted keys (directory of *.pub or YAML): checked first")
    publish.set_defaults(handler=_publish)
    run = actions.add_parser("rollout", help="canary then fleet rollout of a published package")
    run.add_argument("package", help="the signed package directory (its manifest names the model)")
    run.add_argument("--store", required=True, help="object store URI the robots fetch from")
    run.add_argument("--things", required=True, help="comma-separated robot (thing) names, canaries first")
    run.add_argument("--canaries", default=None, help="comma-separated canary names (default: the first k)")
    run.add_argument("--thing-group", default=None, help="AWS IoT thing group for the fleet phase")
    run.add_argument("--backend", default=None, help="job backend URI (default: config/deploy.yaml backend)")
    run.add_argument("--config", default=None, help="deploy config (default: config/deploy.yaml)")
    run.add_argument("--job-id", default=None, help="job id stem (default: model name, version and a nonce)")
    run.add_argument("--previous-version", default="previous", help="version canaries roll back to on abort")
    run.add_argument("--report", default=None, help="write the rollout report (JSON) here")
    run.set_defaults(handler=_rollout)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _publish(args: argparse.Namespace) -> int:
    from fleetloop_core.model_store import publish_package
    from fleetloop_core.signing import TrustedKeys, verify_package

    manifest = verify_package(args.package, TrustedKeys.load(args.trusted))
    prefix = publish_package(args.package, args.store)
    print(json.dumps({"name": manifest.name, "version": manifest.version, "store": args.store, "prefix": prefix}))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from fleetloop_core.manifest import load_manifest
    from fleetloop_core.model_store import package_prefix

    config = load_deploy_config(args.config)
    manifest = load_manifest(args.package)
    if manifest.signature is None:
        raise DeployError(f"{args.package}: package is unsigned; run fleetloop models sign first")
    document = deploy_document(
        manifest,
        args.store,
        package_prefix(manifest.name, manifest.version),
        (Path(args.package) / MANIFEST_NAME).read_bytes(),
    )
    things = [t.strip() for t in args.things.split(",") if t.strip()]
    canaries = [t.strip() for t in args.canaries.split(",")] if args.canaries else None
    job_id = args.job_id or f"{manifest.name}-{manifest.version}-{uuid.uuid4().hex[:6]}".replace(".", "_")
    jobs = open_fleet_jobs(args.backend or config.backend)
    try:
        report = rollout(
            jobs,
            things,
            document,
            job_id,
            config.rollout,
            canaries=canaries,
            previous_version=args.previous_version,
            fleet_group=args.thing_group,
            progress=print,
        )
    finally:
        jobs.close()
    data = report.to_dict()
    if args.report:
        Path(args.report).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"succeeded": report.succeeded, "aborted": report.aborted, "reason": report.reason}))
    return 0 if report.succeeded else 1


def register_jobs(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop-cloud jobs serve``: our IoT Jobs service as a standing process."""
    parser = subparsers.add_parser("jobs", help="our IoT Jobs service (MQTT) as a standing process")
    actions = parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    serve = actions.add_parser("serve", help="answer robots' IoT Jobs requests from a job store until stopped")
    serve.add_argument(
        "--broker", required=True, help="mqtts://host:port?ca_file=...&cert_file=...&key_file=...[&topic_prefix=...]"
    )
    serve.add_argument("--store", required=True, help="job store file (SQLite); rollouts use --backend jobs://PATH")
    serve.set_defaults(handler=_serve_jobs)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _serve_jobs(args: argparse.Namespace) -> int:
    import signal

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    service = MqttJobService.from_uri(args.broker, store=args.store)
    try:
        pending = service.store.things_with_pending()
        print(
            f"job service up: {service.uri}, store {service.store.path}, "
            f"{len(pending)} thing(s) with pending executions",
            flush=True,
        )
        stop.wait()
    finally:
        service.close()
        service.store.close()
    return 0
