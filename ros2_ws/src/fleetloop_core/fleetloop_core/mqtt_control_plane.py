"""The MQTT control plane: the AWS IoT Jobs MQTT protocol through awsiotsdk's MQTT 5 client, mutual TLS.

AWS IoT Core in production, any MQTT 5 broker (mosquitto) with our own job service
(``fleetloop_cloud.job_service_mqtt``) here. The client reconnects with exponential back-off and jitter; while
the broker is away the robot keeps serving, ``next_job`` returns None and a final status waits to be
delivered. A refused connection is described in words (``fleetloop_core.mqtt_diagnosis``: awscrt's
error named, and a TLS probe naming the certificate problem).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlparse

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.control_plane import ControlPlaneConfig, ControlPlaneError, ControlPlaneUnavailable, Job, MqttConfig
from fleetloop_core.errors import ConfigError
from fleetloop_core.mqtt_diagnosis import describe_connection_failure, probe_tls

if TYPE_CHECKING:  # awscrt is imported where the MQTT plane starts (robots without MQTT need not have it)
    from awscrt import mqtt5

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    topic: str = ""
    payload: Optional[dict[str, Any]] = None


class MqttControlPlane:
    """The AWS IoT Jobs device protocol over awsiotsdk MQTT 5 with mutual TLS."""

    def __init__(self, host: str, port: int, thing_name: str, config: MqttConfig | None = None, poll_s: float = 30.0):
        self.host, self.port = host, int(port)
        self.thing_name = thing_name
        self.config = config or MqttConfig()
        self.poll_s = poll_s
        self.prefix = self.config.topic_prefix
        self._client: mqtt5.Client | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopped = threading.Event()
        self._disconnects = 0
        self._versions: dict[str, int] = {}  # jobId -> the execution's versionNumber last seen
        self._problem: Optional[str] = None  # why we are not connected (None while connected)
        self._problem_logged: Optional[str] = None
        self.connections = 0

    @classmethod
    def from_config(cls, config: ControlPlaneConfig) -> "MqttControlPlane":
        parsed = urlparse(config.uri)
        if not parsed.hostname:
            raise ConfigError(f"control_plane.uri {config.uri!r}: mqtts URIs need a host (mqtts://host:8883)")
        return cls(parsed.hostname, parsed.port or 8883, config.thing_name, config.mqtt, config.poll_s)

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        return self._connected.is_set() and self._subscribed.is_set()

    @property
    def problem(self) -> Optional[str]:
        if self.connected:
            return None
        return self._problem or (
            f"not connected to {self.host}:{self.port} yet" if self._client is not None else "not started"
        )

    def _set_problem(self, problem: str) -> None:
        """Record why we cannot connect: the first reason of an outage is an ERROR, a different one
        later a WARNING, a repeated one (every retry) nothing."""
        self._problem = problem
        if problem == self._problem_logged:
            return
        level = logging.ERROR if self._problem_logged is None else logging.WARNING
        self._problem_logged = problem
        log.log(level, "%s: no control plane: %s; serving continues, retrying with back-off", self.thing_name, problem)

    def start(self) -> None:
        """Start connecting (returns after ``connect_timeout_s`` even if the broker is away)."""
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self.config, name)
            if not Path(path).is_file():
                raise ConfigError(f"control_plane.mqtt.{name}: {path} does not exist")
        config = self.config
        self._stopped.clear()
        self._client = client = mqtt5_client_builder.mtls_from_path(
            endpoint=self.host,
            port=self.port,
            cert_filepath=config.cert_file,
            pri_key_filepath=config.key_file,
            ca_filepath=config.ca_file,
            client_id=config.client_id or self.thing_name,
            keep_alive_interval_sec=config.keep_alive_s,
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            min_reconnect_delay_ms=int(config.reconnect_min_s * 1000),
            max_reconnect_delay_ms=int(config.reconnect_max_s * 1000),
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_connected,
            on_lifecycle_connection_failure=self._on_connection_failure,
            on_lifecycle_disconnection=self._on_disconnected,
            on_lifecycle_stopped=lambda _e: self._stopped.set(),
        )
        client.start()
        if not config.connect_timeout_s or self._subscribed.wait(config.connect_timeout_s / 2):
            return
        # awscrt reports some TLS failures only after s2n's blinding delay (10-30 s): find the reason
        # ourselves, with the same files, so that it is known within the connect timeout
        if not self._problem:
            reason = probe_tls(
                self.host, self.port, config.ca_file, config.cert_file, config.key_file, config.connect_timeout_s / 2
            )
            if reason and not self._subscribed.is_set():
                self._set_problem(f"cannot connect to {self.host}:{self.port}: {reason}")
        if not self._subscribed.wait(max(0.0, config.connect_timeout_s / 2)) and not self._problem:
            self._set_problem(
                f"TLS to {self.host}:{self.port} works, but no MQTT session within "
                f"{config.connect_timeout_s:g} s (control_plane.mqtt.connect_timeout_s)"
            )

    def _on_connected(self, _event) -> None:
        from awscrt import mqtt5

        self.connections += 1
        self._connected.set()
        self._problem = self._problem_logged = None
        log.info("%s: connected to %s:%d (connection %d)", self.thing_name, self.host, self.port, self.connections)
        topics = iot_jobs.device_subscriptions(self.thing_name, self.prefix)
        client = self._client
        if client is None:  # closed meanwhile
            return
        # a clean session forgets subscriptions: subscribe on every connection, then ask for work
        future = client.subscribe(
            mqtt5.SubscribePacket([mqtt5.Subscription(topic, mqtt5.QoS.AT_LEAST_ONCE) for topic in topics])
        )

        def done(f) -> None:
            try:
                codes = f.result().reason_codes
            except Exception as exc:  # the connection dropped before the SUBACK
                log.warning("%s: subscribe failed (%s); will retry on reconnect", self.thing_name, exc)
                return
            refused = [t for t, c in zip(topics, codes) if int(c) >= 0x80]
            if refused:
                self._set_problem(
                    f"the broker refused subscriptions {refused} (codes {[int(c) for c in codes]}); "
                    "a broker that refuses $-topics needs control_plane.mqtt.topic_prefix"
                )
                return
            self._subscribed.set()
            self._wake.set()

        future.add_done_callback(done)

    def _on_connection_failure(self, event) -> None:
        reason = describe_connection_failure(getattr(event, "exception", event))
        connack = getattr(event, "connack_packet", None)
        if connack is not None and getattr(connack, "reason_code", None) is not None:
            reason += f" (CONNACK reason {getattr(connack.reason_code, 'name', connack.reason_code)})"
        self._set_problem(f"cannot connect to {self.host}:{self.port}: {reason}")

    def _on_disconnected(self, event) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._problem = f"disconnected from {self.host}:{self.port} ({getattr(event, 'exception', '')})"
        if was and self._client is None:  # close() stopped it: nothing to reconnect
            log.debug("%s: disconnected from %s:%d on close", self.thing_name, self.host, self.port)
        elif was:
            self._disconnects += 1
            log.warning(
                "%s: disconnected from %s:%d (%s); serving continues, reconnecting with back-off",
                self.thing_name,
                self.host,
                self.port,
                getattr(event, "exception", ""),
            )
        with self._lock:
            for pending in self._pending.values():
                pending.event.set()  # wake requests: they fail as unavailable

    def _on_publish(self, data) -> None:
        packet = data.publish_packet
        topic = packet.topic
        try:
            thing, rest = iot_jobs.parse_jobs_topic(topic, self.prefix)
            payload = json.loads(bytes(packet.payload).decode("utf-8")) if packet.payload else {}
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: ignoring message on %s (%s)", self.thing_name, topic, exc)
            return
        if thing != self.thing_name:
            log.warning("%s: ignoring message for thing %s on %s", self.thing_name, thing, topic)
            return
        if rest == ["notify-next"]:
            self._wake.set()
            return
        token = payload.get("clientToken") if isinstance(payload, dict) else None
        with self._lock:
            pending = self._pending.get(token) if token else None
        if pending is not None:
            pending.topic, pending.payload = topic, payload
            pending.event.set()

    def _request(self, topic: str, payload: dict[str, Any], token: str) -> tuple[str, dict[str, Any]]:
        from awscrt import mqtt5

        if self._client is None or not self.connected:
            raise ControlPlaneUnavailable(f"{self.thing_name}: not connected to {self.host}:{self.port}")
        pending = _Pending()
        with self._lock:
            self._pending[token] = pending
        try:
            self._client.publish(
                mqtt5.PublishPacket(
                    topic=topic, payload=json.dumps(payload).encode("utf-8"), qos=mqtt5.QoS.AT_LEAST_ONCE
                )
            )
            if not pending.event.wait(self.config.request_timeout_s) or pending.payload is None:
                raise ControlPlaneUnavailable(
                    f"{self.thing_name}: no answer on {topic} within {self.config.request_timeout_s} s"
                )
            return pending.topic, pending.payload
        finally:
            with self._lock:
                self._pending.pop(token, None)

    # ------------------------------------------------------------------ protocol
    def next_job(self, timeout_s: float) -> Optional[Job]:
        """Wait for a notification (or ``timeout_s``), then claim the next execution via start-next."""
        self._wake.wait(timeout_s)
        self._wake.clear()
        if not self.connected:
            return None
        token = uuid.uuid4().hex
        try:
            topic, payload = self._request(
                iot_jobs.start_next_topic(self.thing_name, self.prefix), iot_jobs.start_next_request(token), token
            )
        except ControlPlaneUnavailable as exc:
            log.debug("%s", exc)
            return None
        if topic.endswith("/rejected"):
            log.warning("%s: start-next rejected: %s %s", self.thing_name, payload.get("code"), payload.get("message"))
            return None
        execution = payload.get("execution")
        if not execution:
            return None
        self._wake.set()  # after this job, look again at once: more may be queued
        return Job(
            str(execution.get("jobId")),
            execution.get("jobDocument") or {},
            execution.get("versionNumber"),
            execution.get("executionNumber"),
            execution.get("queuedAt"),
        )

    def describe(self, job_id: str, execution_number: int | None = None) -> dict[str, Any]:
        """Return the execution as the service has it now (DescribeJobExecution, with its document;
        a finished execution, which the service answers with TerminalStateReached: its state)."""
        token = uuid.uuid4().hex
        topic, payload = self._request(
            iot_jobs.describe_topic(self.thing_name, job_id, self.prefix),
            iot_jobs.describe_request(token, execution_number),
            token,
        )
        if topic.endswith("/rejected"):
            if payload.get("code") == "TerminalStateReached":  # finished: its state comes with the error
                return {"jobId": job_id, **(payload.get("executionState") or {"status": "TERMINAL"})}
            raise ControlPlaneError(
                f"{self.thing_name}/{job_id}: describe rejected ({payload.get('code')}: {payload.get('message')})"
            )
        execution = payload.get("execution")
        if not isinstance(execution, dict):
            raise ControlPlaneError(f"{self.thing_name}/{job_id}: describe answered without an execution")
        return execution

    def _remember_version(self, job_id: str, version: int) -> None:
        self._versions.pop(job_id, None)
        self._versions[job_id] = version
        while len(self._versions) > 64:  # the oldest jobs are long finished
            self._versions.pop(next(iter(self._versions)))

    def update(self, job: Job, status: str, details: dict[str, Any]) -> None:
        """Publish an UpdateJobExecution with ``expectedVersion`` and wait for accepted.

        ``VersionMismatch`` (someone else changed the execution since we last saw it): the execution
        is read again; while it is still QUEUED / IN_PROGRESS the update is retried on its current
        version, otherwise ControlPlaneError names the status it reached meanwhile. Any other
        rejection is a ControlPlaneError naming the code.
        """
        for _ in range(3):
            token = uuid.uuid4().hex
            expected = self._versions.get(job.job_id, job.version_number)
            request = iot_jobs.update_request(
                status, token, details, expected_version=expected, execution_number=job.execution_number
            )
            topic, payload = self._request(
                iot_jobs.update_topic(self.thing_name, job.job_id, self.prefix), request, token
            )
            if not topic.endswith("/rejected"):
                version = (payload.get("executionState") or {}).get("versionNumber")
                if isinstance(version, int):
                    self._remember_version(job.job_id, version)
                return
            code = payload.get("code")
            if code != "VersionMismatch":
                raise ControlPlaneError(
                    f"{self.thing_name}/{job.job_id}: update to {status} rejected ({code}: {payload.get('message')})"
                )
            try:
                current = self.describe(job.job_id, job.execution_number)
            except ControlPlaneError as exc:
                raise ControlPlaneError(
                    f"{self.thing_name}/{job.job_id}: update to {status} got VersionMismatch "
                    f"(expected {expected}) and the execution cannot be read again: {exc}"
                ) from None
            now = current.get("status")
            if now not in ("QUEUED", "IN_PROGRESS"):
                raise ControlPlaneError(
                    f"{self.thing_name}/{job.job_id}: update to {status} refused: the execution "
                    f"became {now} elsewhere (VersionMismatch, expected version {expected})"
                )
            self._remember_version(job.job_id, int(current.get("versionNumber", 0)))
            log.warning(
                "%s/%s: VersionMismatch (expected version %s, now %s, %s); updating on the current version",
                self.thing_name,
                job.job_id,
                expected,
                self._versions[job.job_id],
                now,
            )
        raise ControlPlaneError(
            f"{self.thing_name}/{job.job_id}: update to {status} still VersionMismatch after "
            f"reading the execution 3 times; another writer keeps changing it"
        )

    def close(self) -> None:
        """Disconnect and stop reconnecting (``_client`` None first: the disconnect it causes is no warning)."""
        client, self._client = self._client, None
        self._wake.set()
        if client is not None:
            client.stop()
            self._stopped.wait(5)
