"""How jobs reach a robot: the ``ControlPlane`` interface and its two real implementations.

* ``local`` (``file:///path``, the embedded default): a watched job directory,
  ``<dir>/<thing>/queued/<jobId>.json`` → ``in_progress/`` → ``done/``, statuses in ``status/``.
* ``mqtt`` (``mqtts://host:port``, ``fleetloop_core.mqtt_control_plane``): the AWS IoT Jobs MQTT protocol (``iot_jobs``)
  through awsiotsdk's MQTT 5 client with mutual TLS — AWS IoT Core in production, any MQTT 5 broker
  (mosquitto) with our own job service (``fleetloop_cloud.job_service_mqtt``) here. The client reconnects with
  exponential back-off and jitter; while the broker is away the robot keeps serving, ``next_job``
  returns None and a final status waits to be delivered.

Both have the same semantics as IoT Jobs: ``next_job`` claims the next pending execution
(IN_PROGRESS ones first, so a job interrupted by a restart comes back), ``update`` reports
IN_PROGRESS / SUCCEEDED / FAILED / REJECTED with string ``statusDetails``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol
from urllib.parse import unquote, urlparse

from pydantic import Field

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.config import ConfigModel, load_config
from fleetloop_core.errors import ConfigError, FleetLoopError


if TYPE_CHECKING:  # awscrt is imported where the MQTT plane starts (robots without MQTT need not have it)
    pass

log = logging.getLogger(__name__)


class ControlPlaneError(FleetLoopError):
    """The control plane refused a request (the message names thing, job and code)."""


class ControlPlaneUnavailable(ControlPlaneError):
    """The control plane cannot be reached right now; retry later."""


@dataclass(frozen=True)
class Job:
    """One job execution claimed by this robot."""

    job_id: str
    document: dict[str, Any]
    version_number: Optional[int] = None
    execution_number: Optional[int] = None
    queued_at: Optional[int] = None


class ControlPlane(Protocol):
    """What the deploy agent needs from a job source."""

    thing_name: str

    def start(self) -> None: ...
    def next_job(self, timeout_s: float) -> Optional[Job]: ...
    def update(self, job: Job, status: str, details: dict[str, Any]) -> None: ...
    def close(self) -> None: ...

    @property
    def connected(self) -> bool: ...

    @property
    def problem(self) -> Optional[str]:
        """Why the control plane cannot be reached right now (None while it can)."""
        ...


class MqttConfig(ConfigModel):
    """MQTT 5 over mutual TLS (AWS IoT Core or any broker)."""

    topic_prefix: str = iot_jobs.DEFAULT_PREFIX  # "$aws"; change only for brokers that refuse $-topics
    ca_file: str = "/etc/fleetloop/tls/ca.pem"
    cert_file: str = "/etc/fleetloop/tls/robot.crt"
    key_file: str = "/etc/fleetloop/tls/robot.key"
    client_id: Optional[str] = None  # default: the thing name (AWS IoT policy convention)
    keep_alive_s: int = Field(default=60, ge=5)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, ge=0)


class ControlPlaneConfig(ConfigModel):
    """Where jobs come from (config/model_manager.yaml, section control_plane)."""

    uri: str = "file:///var/lib/fleetloop/jobs"  # file:///dir (local) or mqtts://host:port (mqtt)
    thing_name: str = Field(default="robot-0", min_length=1)
    poll_s: float = Field(default=30.0, gt=0)  # ask for the next job at least this often
    mqtt: MqttConfig = Field(default_factory=MqttConfig)


def load_control_plane_config(path: str, section: str | None = "control_plane") -> ControlPlaneConfig:
    """Return the control-plane config from a YAML file (by default its ``control_plane`` section)."""
    return load_config(ControlPlaneConfig, path, section)


# ====================================================================================== local
def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class LocalControlPlane:
    """Jobs as JSON files in a directory shared with the (local) job service."""

    def __init__(self, directory: str | Path, thing_name: str, poll_s: float = 0.5):
        self.directory = Path(directory)
        self.thing_name = thing_name
        self.poll_s = poll_s
        self.root = self.directory / thing_name
        for name in ("queued", "in_progress", "done", "status"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._closed = threading.Event()

    @classmethod
    def from_config(cls, config: ControlPlaneConfig) -> "LocalControlPlane":
        parsed = urlparse(config.uri)
        return cls(unquote(parsed.path), config.thing_name, poll_s=min(config.poll_s, 1.0))

    @property
    def connected(self) -> bool:
        return self.root.is_dir()

    @property
    def problem(self) -> Optional[str]:
        return None if self.root.is_dir() else f"job directory {self.root} is gone"

    def start(self) -> None:
        self._closed.clear()

    def close(self) -> None:
        self._closed.set()

    def _read(self, path: Path) -> Optional[dict[str, Any]]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise ControlPlaneError(f"{path}: unreadable job file ({exc})") from None

    def _job(self, path: Path, data: dict[str, Any]) -> Job:
        return Job(
            str(data.get("jobId") or path.stem),
            data.get("jobDocument", {}),
            data.get("versionNumber"),
            data.get("executionNumber", 1),
            data.get("queuedAt"),
        )

    def _claim(self) -> Optional[Job]:
        for path in sorted((self.root / "in_progress").glob("*.json")):
            data = self._read(path)
            if data is not None:
                return self._job(path, data)
        queued = []
        for path in (self.root / "queued").glob("*.json"):
            data = self._read(path)
            if data is not None:
                queued.append((data.get("queuedAt", 0), path.name, path, data))
        for _, _, path, data in sorted(queued, key=lambda q: (q[0], q[1])):
            target = self.root / "in_progress" / path.name
            try:
                os.rename(path, target)  # atomic claim
            except FileNotFoundError:
                continue  # withdrawn (canceled) meanwhile
            data["status"] = "IN_PROGRESS"
            data["startedAt"] = iot_jobs.now_s()
            write_json_atomic(target, data)
            self._write_status(data.get("jobId") or path.stem, "IN_PROGRESS", {})
            return self._job(target, data)
        return None

    def next_job(self, timeout_s: float) -> Optional[Job]:
        """Claim the next job (IN_PROGRESS first, then the oldest QUEUED); None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self._claim()
            if job is not None or self._closed.is_set():
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._closed.wait(min(self.poll_s, remaining))

    def _write_status(self, job_id: str, status: str, details: dict[str, Any]) -> None:
        write_json_atomic(
            self.root / "status" / f"{job_id}.json",
            {
                "jobId": job_id,
                "thingName": self.thing_name,
                "status": status,
                "statusDetails": iot_jobs.status_details(details),
                "lastUpdatedAt": iot_jobs.now_s(),
            },
        )

    def update(self, job: Job, status: str, details: dict[str, Any]) -> None:
        """Report a status; a terminal one moves the job to ``done/``."""
        iot_jobs.update_request(status, "local", details)  # validates the status
        current = self._read(self.root / "status" / f"{job.job_id}.json")
        if current and current.get("status") in iot_jobs.TERMINAL and current.get("status") != status:
            raise ControlPlaneError(
                f"{self.thing_name}/{job.job_id}: already {current['status']}, "
                f"cannot become {status} (InvalidStateTransition)"
            )
        self._write_status(job.job_id, status, details)
        if status in iot_jobs.TERMINAL:
            source = self.root / "in_progress" / f"{job.job_id}.json"
            if source.exists():
                os.replace(source, self.root / "done" / source.name)


def _open_mqtt(config: ControlPlaneConfig) -> ControlPlane:
    # imported on use: a robot on the local control plane needs neither awscrt nor the MQTT client
    from fleetloop_core.mqtt_control_plane import MqttControlPlane

    return MqttControlPlane.from_config(config)


CONTROL_PLANES: dict[str, Callable[[ControlPlaneConfig], ControlPlane]] = {
    "file": LocalControlPlane.from_config,
    "mqtts": _open_mqtt,
}


def open_control_plane(config: ControlPlaneConfig, source: str = "control_plane") -> ControlPlane:
    """Return the control plane for ``config.uri``'s scheme (file: local directory, mqtts: MQTT/IoT Jobs)."""
    scheme = urlparse(config.uri).scheme
    factory = CONTROL_PLANES.get(scheme)
    if factory is None:
        raise ConfigError(
            f"{source}: uri {config.uri!r} has unknown scheme {scheme!r} (known: {', '.join(sorted(CONTROL_PLANES))})"
        )
    return factory(config)
