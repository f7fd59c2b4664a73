"""The robot bring-up arguments, shared by ``launch/robot.launch.py`` and ``fleetloop robot``.

Both read the same robot YAML and turn the same arguments into the same per-node parameter
overrides with :func:`node_overrides`, so a launch on a robot and ``fleetloop robot`` here start
identical nodes. Arguments are strings (as launch passes them); an empty string keeps the YAML's
value. No rclpy or launch import here: the launch file and the tests use it as plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from fleetloop_core.dds import TRANSPORTS
from fleetloop_core.errors import ConfigError


@dataclass(frozen=True)
class Argument:
    """One bring-up argument: name (launch spelling), default, what it sets."""

    name: str
    default: str
    description: str


ARGUMENTS: tuple[Argument, ...] = (
    Argument("config", "", "robot YAML (ros__parameters per node); default: config/robot.yaml"),
    Argument("robot_id", "", "robot id in sidecars, diagnostics and the control plane's thing name"),
    Argument("namespace", "", "ROS namespace of every node, e.g. /robot7"),
    Argument("image_topics", "", "comma-separated sensor_msgs/Image topics"),
    Argument("compressed_topics", "", "comma-separated sensor_msgs/CompressedImage topics"),
    Argument("store_uri", "", "object store the uploader drains to (file:///..., s3://bucket/prefix)"),
    Argument("models_dir", "", "reference models directory (<dir>/T4, <dir>/T3)"),
    Argument("control_plane", "", "deploy-job source: file:///dir or mqtts://endpoint:8883"),
    Argument("use_gpu", "", "true: TensorRT -> CUDA -> CPU execution providers; false: CPU"),
    Argument("composed", "true", "true: one process, frames passed in-process; false: one process per node"),
    Argument(
        "transport", "", "DDS transport: large_data (Fast DDS TCP+SHM), udp (any DDS vendor's camera), shm, default"
    ),
    Argument(
        "type_propagation",
        "",
        "false: Fast DDS announces no XTypes type information (cameras of other "
        "DDS vendors, e.g. Cyclone DDS, match only then)",
    ),
)
ARGUMENT_NAMES = tuple(a.name for a in ARGUMENTS)
LAUNCH_ONLY = ("respawn", "respawn_delay")  # what ros2 launch does to a process that exited


def parse_bool(name: str, text: str) -> bool:
    """Return the boolean an argument string means; ConfigError naming the argument otherwise."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"argument {name}: expected true or false (got {text!r})")


def parse_topics(text: str) -> list[str]:
    """Return the topics of a comma-separated list."""
    return [topic.strip() for topic in text.split(",") if topic.strip()]


def node_overrides(values: Mapping[str, str | None]) -> dict[str, dict[str, object]]:
    """Return {node: {dotted parameter: value}} for the arguments that were given (non-empty)."""
    unknown = set(values) - set(ARGUMENT_NAMES)
    if unknown:
        raise ConfigError(f"unknown bring-up argument {sorted(unknown)[0]} (known: {', '.join(ARGUMENT_NAMES)})")
    given = {name: str(value).strip() for name, value in values.items() if value is not None and str(value).strip()}
    nodes: dict[str, dict[str, object]] = {"perception": {}, "model_manager": {}, "selector": {}, "uploader": {}}
    if "robot_id" in given:
        for node in nodes.values():
            node["robot_id"] = given["robot_id"]
        nodes["model_manager"]["control_plane.thing_name"] = given["robot_id"]
    for name in ("image_topics", "compressed_topics"):
        if name in given:
            nodes["perception"][name] = nodes["selector"][name] = parse_topics(given[name])
    if "store_uri" in given:
        nodes["selector"]["queue.store"] = nodes["uploader"]["queue.store"] = given["store_uri"]
    if "models_dir" in given:
        nodes["perception"]["models_dir"] = given["models_dir"]
    if "control_plane" in given:
        nodes["model_manager"]["control_plane.uri"] = given["control_plane"]
    if "use_gpu" in given:
        nodes["perception"]["use_gpu"] = nodes["model_manager"]["use_gpu"] = parse_bool("use_gpu", given["use_gpu"])
    if "transport" in given:
        if given["transport"] not in TRANSPORTS:
            raise ConfigError(
                f"argument transport: expected one of {', '.join(TRANSPORTS)} (got {given['transport']!r})"
            )
        for node in nodes.values():
            node["dds.transport"] = given["transport"]
    if "type_propagation" in given:
        for node in nodes.values():
            node["dds.type_propagation"] = parse_bool("type_propagation", given["type_propagation"])
    return nodes


# ------------------------------------------------------------------------------ bag replay (launch/replay.launch.py)
BAG_STORAGE = {".mcap": "mcap", ".db3": "sqlite3"}


def replay_target(namespace: str, image_topics: str) -> str:
    """Return the fully qualified topic the perception node subscribes to for the first image topic.

    ROS name resolution: an absolute topic (``/camera/color/image_raw``) ignores the namespace; a
    relative one (``camera/image_raw``) is put under it.
    """
    topic = (parse_topics(image_topics) or ["camera/image_raw"])[0]
    if topic.startswith("/"):
        return topic
    namespace = namespace.strip("/")
    return f"/{namespace}/{topic}" if namespace else f"/{topic}"


def bag_storage(bag: str, storage: str = "") -> str | None:
    """Return the rosbag2 storage id to pass (``-s``): the one given, else by the file's suffix.

    A bag directory carries metadata.yaml that names its storage, so it needs none; a bare
    ``.mcap`` or ``.db3`` file does (Humble's ``ros2 bag play`` assumes sqlite3 without it).
    """
    if storage.strip():
        return storage.strip()
    for suffix, storage_id in BAG_STORAGE.items():
        if bag.lower().endswith(suffix):
            return storage_id
    return None


def bag_play_command(
    bag: str, bag_topic: str, target: str, rate: str = "1.0", loop: str = "false", storage: str = ""
) -> list[str]:
    """Return the ``ros2 bag play`` command that plays ``bag_topic`` of ``bag`` onto ``target``."""
    if not bag.strip():
        raise ConfigError("argument bag: the rosbag2 to play (a directory or an .mcap/.db3 file) is required")
    try:
        float(rate)
    except ValueError:
        raise ConfigError(f"argument rate: expected a number (got {rate!r})") from None
    command = ["ros2", "bag", "play", bag]
    storage_id = bag_storage(bag, storage)
    if storage_id:
        command += ["-s", storage_id]
    command += ["--rate", str(rate), "--remap", f"{bag_topic}:={target}"]
    if parse_bool("loop", loop):
        command.append("--loop")
    return command
