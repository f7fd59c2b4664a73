"""What each robot node is configured with, and the robot YAML that holds it (no rclpy here).

One YAML file per robot (``config/robot.yaml``) in the ROS 2 parameter-file form: a section per
node name (``perception``, ``model_manager``, ``selector``, ``uploader``; ``/**`` for all nodes,
``/**/<node>`` or ``/<namespace>/<node>`` as rcl accepts them), each with ``ros__parameters``.
The keys under ``ros__parameters`` are those of the fleetloop_core config models
(``cascade`` = CascadeConfig, ``selection`` = SelectionConfig, ``queue`` = QueueConfig,
``manager`` = ModelManagerConfig, ``health`` = HealthConfig) plus a few node keys (topics,
robot id). ``ros2 launch`` hands the file to rcl; ``fleetloop robot`` reads it here, validates
every key of every node (errors name the file, the node and the key) and passes the same values
as parameter overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from fleetloop_core.cascade import CascadeConfig
from fleetloop_core.config import ConfigModel, read_yaml, validate
from fleetloop_core.control_plane import ControlPlaneConfig
from fleetloop_core.dds import DdsConfig
from fleetloop_core.detection_cascade import DetectionCascadeConfig
from fleetloop_core.errors import ConfigError
from fleetloop_core.health import HealthConfig
from fleetloop_core.model_manager import ModelManagerConfig
from fleetloop_core.selection_config import SelectionConfig, policy_params
from fleetloop_core.upload_queue import QueueConfig

ImageQos = Literal["sensor_data", "reliable"]


class PerceptionSettings(ConfigModel):
    """The perception node: camera topics in, cascade results out."""

    robot_id: str = Field(default="robot-1", min_length=1)
    image_topics: list[str] = Field(default_factory=lambda: ["camera/image_raw"])  # sensor_msgs/Image
    compressed_topics: list[str] = Field(default_factory=list)  # sensor_msgs/CompressedImage
    image_qos: ImageQos = "sensor_data"  # best effort, shallow (what cameras publish); or reliable
    results_topic: str = "frame_results"
    detections_topic: str = "detections"  # Detection2DArray, when the models are detectors (task: detection)
    models_dir: str = "models"  # reference models: <models_dir>/<tier>/manifest.json
    edge_tier: str = "T4"  # runs on every frame
    escalation_tier: str = "T3"  # runs when T4 is unsure; "" for none
    use_gpu: bool = False  # TensorRT -> CUDA -> CPU; False: CPU only
    intra_op_threads: int = Field(default=1, ge=1)
    cascade: CascadeConfig = CascadeConfig()
    detection: DetectionCascadeConfig = DetectionCascadeConfig()  # the cascade's rules for detectors
    health: HealthConfig = HealthConfig()
    dds: DdsConfig = DdsConfig()  # applied before rclpy starts (fleetloop_core.dds); read-only here

    @model_validator(mode="after")
    def _some_topic(self) -> "PerceptionSettings":
        if not self.image_topics and not self.compressed_topics:
            raise ValueError("image_topics and compressed_topics are both empty: nothing to subscribe to")
        return self


PERCEPTION_READ_ONLY = (
    "robot_id",
    "image_topics",
    "compressed_topics",
    "image_qos",
    "results_topic",
    "models_dir",
    "edge_tier",
    "escalation_tier",
    "use_gpu",
    "intra_op_threads",
    "cascade.novelty_memory",
    "cascade.flicker_window",
    "health.period_s",
    "detections_topic",
    "detection.novelty_memory",
    "detection.flicker_window",
    "dds.",
)


class ModelManagerSettings(ConfigModel):
    """The model manager node: hot-swaps the perception node's cascade (same process)."""

    robot_id: str = Field(default="robot-1", min_length=1)
    use_gpu: bool = False  # providers of swapped-in models (as perception)
    status_topic: str = "model_status"  # latched fleetloop_interfaces/ModelStatus
    swap_timeout_s: float = Field(default=120.0, gt=0.0)  # a SwapModel call waits this long for the outcome
    manager: ModelManagerConfig = ModelManagerConfig()
    # where deploy jobs come from; control_plane.uri "" takes jobs only through the ROS services
    control_plane: ControlPlaneConfig = ControlPlaneConfig(uri="")
    health: HealthConfig = HealthConfig()
    dds: DdsConfig = DdsConfig()


MODEL_MANAGER_READ_ONLY = (
    "robot_id",
    "use_gpu",
    "control_plane",
    "status_topic",
    "manager.store.",
    "manager.ring_buffer_frames",
    "manager.intra_op_threads",
    "manager.events_kept",
    "manager.jobs_kept",
    "health.period_s",
    "dds.",
)
MODEL_MANAGER_SKIPPED = ("manager.providers",)  # derived from use_gpu


class SelectorSettings(ConfigModel):
    """The selector node: offers every frame to the selector, queues the kept ones."""

    robot_id: str = Field(default="robot-1", min_length=1)
    site: str = ""  # where the robot works; goes into every sidecar
    # when not composed with perception, frames and results arrive as messages, paired by stamp
    image_topics: list[str] = Field(default_factory=lambda: ["camera/image_raw"])
    compressed_topics: list[str] = Field(default_factory=list)
    image_qos: ImageQos = "sensor_data"
    results_topic: str = "frame_results"
    decisions_topic: str = "frame_decisions"
    pairing_depth: int = Field(default=64, ge=1)  # frames/results waiting for their partner
    selection: SelectionConfig = SelectionConfig()
    queue: QueueConfig = QueueConfig()
    health: HealthConfig = HealthConfig()
    dds: DdsConfig = DdsConfig()

    @field_validator("selection")
    @classmethod
    def _policy_known(cls, selection: SelectionConfig) -> SelectionConfig:
        policy_params(selection, "selection")  # ConfigError: unknown policy name, params that do not fit it
        return selection


SELECTOR_READ_ONLY = (
    "robot_id",
    "site",
    "image_topics",
    "compressed_topics",
    "image_qos",
    "results_topic",
    "decisions_topic",
    "pairing_depth",
    "queue.",
    "health.period_s",
    "selection.seed",
    "dds.",
)


class UploaderSettings(ConfigModel):
    """The uploader node: drains the queue to the object store within the bandwidth cap."""

    robot_id: str = Field(default="robot-1", min_length=1)
    store_probe_s: float = Field(default=5.0, gt=0.0)  # how often the store's reachability is checked
    queue: QueueConfig = QueueConfig()
    health: HealthConfig = HealthConfig()
    dds: DdsConfig = DdsConfig()


UPLOADER_READ_ONLY = (
    "robot_id",
    "store_probe_s",
    "queue.directory",
    "queue.store",
    "queue.synchronous",
    "queue.orphan_grace_s",
    "queue.disk_cap_bytes",
    "health.period_s",
    "dds.",
)

NODE_SETTINGS: dict[str, type[ConfigModel]] = {
    "perception": PerceptionSettings,
    "model_manager": ModelManagerSettings,
    "selector": SelectorSettings,
    "uploader": UploaderSettings,
}


def validate_settings(model: type[ConfigModel], data: Mapping[str, Any], source: str) -> Any:
    """Return ``model`` validated from ``data``; every ConfigError names ``source`` (file or node)."""
    try:
        return validate(model, data, source=source)
    except ConfigError as exc:
        if str(exc).startswith(source):
            raise
        raise ConfigError(f"{source}: {exc}") from None  # raised by a core check inside a validator


# ------------------------------------------------------------------------------ the robot YAML
def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested mappings as {dotted key: value} (lists stay values), as rcl reads parameter files."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Return {dotted key: value} as nested dicts (the inverse of :func:`flatten`)."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        target = nested
        *parents, leaf = name.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return nested


def _matches(section: str, node: str, namespace: str) -> int:
    """Return how specifically ``section`` names ``node`` in ``namespace``: 0 no, 1 all, 2 any ns, 3 exact."""
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if section in ("/**", "**"):
        return 1
    if section in (f"/**/{node}", f"**/{node}"):
        return 2
    if section.lstrip("/") == node and not namespace:
        return 3
    if section == f"{namespace}/{node}":
        return 3
    return 0


class RobotConfig:
    """The validated robot YAML: parameters (dotted keys) and settings per node."""

    def __init__(self, path: str | Path, namespace: str = "", overrides: Mapping[str, Mapping[str, Any]] | None = None):
        self.path = Path(path)
        self.namespace = namespace
        data = read_yaml(self.path)
        self.parameters: dict[str, dict[str, Any]] = {node: {} for node in NODE_SETTINGS}
        used_wildcard: set[str] = set()
        wildcard_keys: set[str] = set()
        for specificity in (1, 2, 3):  # later (more specific) sections win, as in rcl
            for section, body in data.items():
                section = str(section)
                matched = [node for node in NODE_SETTINGS if _matches(section, node, namespace) == specificity]
                if not matched:
                    continue
                if not isinstance(body, Mapping) or not isinstance(body.get("ros__parameters"), Mapping):
                    raise ConfigError(f"{self.path}: {section}: needs a ros__parameters mapping")
                extra = set(body) - {"ros__parameters"}
                if extra:
                    raise ConfigError(
                        f"{self.path}: {section}: unknown key {sorted(extra)[0]} (only ros__parameters belongs here)"
                    )
                flat = flatten(body["ros__parameters"])
                for node in matched:
                    known = self._known(node, flat) if specificity == 1 else flat
                    if specificity == 1:
                        wildcard_keys.update(flat)
                        used_wildcard.update(known)
                    self.parameters[node].update(known)
        # a section for a node of another namespace is fine; one for a node we do not have is a typo
        unknown_sections = [str(s) for s in data if str(s).rstrip("/").rsplit("/", 1)[-1] not in (*NODE_SETTINGS, "**")]
        if unknown_sections:
            raise ConfigError(
                f"{self.path}: unknown node {unknown_sections[0]!r} (known: {', '.join(NODE_SETTINGS)}, /**)"
            )
        unused = sorted(wildcard_keys - used_wildcard)
        if unused:
            raise ConfigError(f"{self.path}: /**: unknown key {unused[0]} (no node has it)")
        for node, values in (overrides or {}).items():
            self.parameters[node].update({k: v for k, v in values.items() if v is not None})
        self.settings = {
            node: validate_settings(model, nest(self.parameters[node]), f"{self.path} [{node}]")
            for node, model in NODE_SETTINGS.items()
        }

    @staticmethod
    def _known(node: str, flat: Mapping[str, Any]) -> dict[str, Any]:
        """Return the wildcard keys a node's settings model has (top-level field names)."""
        fields = NODE_SETTINGS[node].model_fields
        return {key: value for key, value in flat.items() if key.split(".")[0] in fields}


def load_robot_config(
    path: str | Path, namespace: str = "", overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> RobotConfig:
    """Return the robot YAML at ``path`` validated for every node (ConfigError names file, node, key)."""
    return RobotConfig(path, namespace, overrides)
