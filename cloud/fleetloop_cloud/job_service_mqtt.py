"""Our own IoT Jobs service: the cloud side of the AWS IoT Jobs MQTT protocol over any MQTT 5 broker.

:class:`StoreJobs` (``jobs://PATH``) is a rollout's view of a :class:`~fleetloop_cloud.job_store.JobStore`;
:class:`MqttJobService` (``mqtts://host:port``) answers the robots' requests from such a store
(start-next, update, get, describe; ``fleetloop_core.contracts.iot_jobs`` spells the topics and payloads) and
announces their next execution with notify-next.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any, Optional
from urllib.parse import unquote, urlparse

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.errors import ConfigError

from fleetloop_cloud.fleet_jobs import DeployError, ExecutionState, FleetJobs, JobRequest, uri_options
from fleetloop_cloud.job_store import Execution, JobStore, JobStoreError

log = logging.getLogger(__name__)

Error = tuple[str, str]  # (IoT Jobs error code, message)


class StoreJobs(FleetJobs):
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

    def _submit(self, job: JobRequest) -> None:
        try:
            self.store.create_job(job.job_id, job.things, job.document, job.rollout.maximum_per_minute)
        except JobStoreError as exc:
            raise DeployError(f"{self.uri}: {exc}") from None

    def executions(self, job_id: str) -> dict[str, ExecutionState]:
        return {e.thing: ExecutionState(e.thing, e.status, dict(e.details)) for e in self.store.of_job(job_id)}

    def cancel_job(self, job_id: str, reason: str) -> list[str]:
        """Cancel the QUEUED executions (IN_PROGRESS ones finish, as with IoT Jobs without force)."""
        return self.store.cancel_job(job_id, reason)

    def close(self) -> None:
        self.store.close()


def update_error(execution: Optional[Execution], thing: str, job_id: str, payload: dict[str, Any]) -> Optional[Error]:
    """Return why the UpdateJobExecution ``payload`` is rejected (as the Jobs API answers), or None."""
    status = payload.get("status")
    if execution is None:
        return ("ResourceNotFound", f"no execution of job {job_id} for {thing}")
    if status not in iot_jobs.DEVICE_STATUSES:
        return ("InvalidRequest", f"status {status!r} is not one a device may set")
    if execution.terminal:
        # the Jobs API: SUCCEEDED -> IN_PROGRESS and the like are InvalidStateTransition
        return (
            "InvalidStateTransition",
            f"job {job_id} is already {execution.status} on {thing}; it cannot become {status}",
        )
    expected = payload.get("expectedVersion")
    if expected is not None and str(expected) != str(execution.version_number):
        return ("VersionMismatch", f"expected version {expected}, current {execution.version_number}")
    problem = iot_jobs.status_details_problem(payload.get("statusDetails") or {})
    return ("InvalidRequest", problem) if problem else None


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
        self._watcher = threading.Thread(target=self._watch, args=(watch_s,), name="job-store-watch", daemon=True)
        self._watcher.start()

    @classmethod
    def from_uri(cls, uri: str, **options: str) -> "MqttJobService":
        parsed = urlparse(uri)
        query = uri_options(uri, options)
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
        """Announce what changed without a request: notify-next per thing whose next execution changed.

        Two causes: another process (a rollout) wrote into the store file, and time released an
        execution of a staged rollout (``maximumPerMinute``), which changes no row: the device hears
        of it now instead of at its next start-next poll, as IoT Jobs notifies on release.
        """
        version, released_to = self.store.data_version(), iot_jobs.now_s()
        while not self._closing.wait(period_s):
            try:
                now, clock = self.store.data_version(), iot_jobs.now_s()
                released, released_to = self.store.released_between(released_to, clock), max(released_to, clock)
                if now != version:
                    version = now
                    self._signal_change()
                    released = list(set(released) | set(self.store.things_with_pending()) | set(self._announced))
                for thing in released:
                    execution = self.store.next_pending(thing)
                    if self._announced.get(thing) != (execution and (execution.job_id, execution.status)):
                        self._notify_next(thing)
            except Exception:  # the service must outlive one bad read
                log.exception("job service: watching %s failed", self.store.path)

    def _signal_change(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        from awscrt import mqtt5

        client = self._client
        if client is not None:
            client.publish(
                mqtt5.PublishPacket(
                    topic=topic, payload=json.dumps(payload).encode("utf-8"), qos=mqtt5.QoS.AT_LEAST_ONCE
                )
            )

    def _reply(self, thing: str, suffix: str, response: dict[str, Any], token: str | None) -> None:
        """Publish ``response`` on the thing's jobs topic ``suffix``, echoing the request's clientToken."""
        if token:
            response["clientToken"] = token
        self._publish(iot_jobs.jobs_topic(thing, suffix, self.prefix), response)

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
        self._reply(thing, "notify-next", payload, None)

    def _start_next(self, thing: str, payload: dict[str, Any], token: str | None) -> None:
        self.requests.append((thing, "start-next"))
        response: dict[str, Any] = {"timestamp": iot_jobs.now_s()}
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
        self._signal_change()
        self._reply(thing, "start-next/accepted", response, token)

    def _update(self, thing: str, job_id: str, payload: dict[str, Any], token: str | None) -> None:
        self.requests.append((thing, f"update:{payload.get('status')}"))
        with self.store.transaction():
            execution = self.store.get(thing, job_id)
            error = update_error(execution, thing, job_id, payload)
            if error is None and execution is not None:  # update_error names a missing execution
                execution.status = payload["status"]
                if payload.get("statusDetails"):  # as IoT Jobs: statusDetails given replace the old ones
                    execution.details = dict(payload["statusDetails"])
                execution.version_number += 1
                execution.last_updated_at = iot_jobs.now_s()
                self.store.put(execution)
        if error is not None:
            state = execution.state() if execution else None
            self._reply(
                thing, f"{job_id}/update/rejected", iot_jobs.error_response(*error, execution_state=state), token
            )
            return
        response: dict[str, Any] = {"timestamp": iot_jobs.now_s()}
        if payload.get("includeJobExecutionState"):
            response["executionState"] = execution.state()
        if payload.get("includeJobDocument"):
            response["jobDocument"] = execution.document
        self._signal_change()
        self._reply(thing, f"{job_id}/update/accepted", response, token)
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
        self._reply(thing, "get/accepted", {**summaries, "timestamp": iot_jobs.now_s()}, token)

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
                execution_state=execution.state() if execution is not None else None,
            )
            self._reply(thing, f"{job_id}/get/rejected", response, token)
            return
        data = execution.data()
        if payload.get("includeJobDocument") is False:
            data.pop("jobDocument", None)
        self._reply(thing, f"{job_id}/get/accepted", {"execution": data, "timestamp": iot_jobs.now_s()}, token)

    # ------------------------------------------------------------------ FleetJobs
    def _submit(self, job: JobRequest) -> None:
        super()._submit(job)
        for thing in job.things:
            self._notify_next(thing)

    def wait_changed(self, timeout_s: float) -> None:
        """Block until some execution changes or ``timeout_s`` passes."""
        with self._lock:
            self._changed.wait(timeout_s)

    def cancel_job(self, job_id: str, reason: str) -> list[str]:
        touched = super().cancel_job(job_id, reason)
        self._signal_change()
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
