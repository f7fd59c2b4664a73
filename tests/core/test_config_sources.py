"""One source per config value: config/robot.yaml (a ROS 2 parameter file, which cannot include other files)
repeats sections of the per-concern files. What a robot would run with, section by section, must be what the
per-concern file says, except the keys an example robot sets for itself, listed here with the reason."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetloop_core.config import validate
from fleetloop_core.control_plane import ControlPlaneConfig
from fleetloop_core.model_manager import ModelManagerConfig
from fleetloop_core.selection_config import SelectionConfig
from fleetloop_core.upload_queue import QueueConfig

ROOT = Path(__file__).resolve().parents[2]

# section in robot.yaml (node, key) -> (per-concern file, its section or None, model, keys the robot sets itself)
SECTIONS = {
    ("/**/selector", "selection"): ("selection.yaml", None, SelectionConfig, {}),
    ("/**", "queue"): (
        "upload_queue.yaml",
        None,
        QueueConfig,
        {"directory": "this robot's state directory", "store": "this robot's store"},
    ),
    ("/**/model_manager", "manager"): (
        "model_manager.yaml",
        "model_manager",
        ModelManagerConfig,
        {
            "store.root": "this robot's state directory",
            "store.trusted_keys": "the repository's example keys",
            "providers": "the node sets them from its use_gpu parameter",
        },
    ),
    ("/**/model_manager", "control_plane"): (
        "model_manager.yaml",
        "control_plane",
        ControlPlaneConfig,
        {
            "uri": "this robot's job directory",
            "thing_name": "this robot's name",
            "poll_s": "the example polls its local job directory more often than a fleet robot polls AWS",
            "mqtt.ca_file": "the example uses the local job directory, no MQTT",
            "mqtt.cert_file": "the example uses the local job directory, no MQTT",
            "mqtt.key_file": "the example uses the local job directory, no MQTT",
        },
    ),
}


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("params", "weights"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _effective(model, data: dict, source: str) -> dict[str, object]:
    return _flat(validate(model, data, source=source).model_dump(mode="json"))


def test_robot_yaml_runs_with_the_values_of_the_per_concern_files():
    robot = yaml.safe_load((ROOT / "config" / "robot.yaml").read_text())
    differences = []
    for (node, key), (name, section, model, own) in SECTIONS.items():
        data = yaml.safe_load((ROOT / "config" / name).read_text())
        concern = _effective(model, data[section] if section else data, f"config/{name}")
        example = _effective(model, robot[node]["ros__parameters"][key], f"config/robot.yaml {node} {key}")
        assert set(own) <= set(concern), (
            f"{name}: listed robot-specific keys it does not have: {set(own) - set(concern)}"
        )
        differences += [
            f"robot.yaml {node} {key}.{field} = {example[field]!r}, config/{name} says {concern[field]!r}"
            for field in sorted(concern)
            if field not in own and example.get(field) != concern[field]
        ]
    assert differences == [], "\n".join(differences)


def test_the_check_sees_a_value_copied_wrongly():
    selection = yaml.safe_load((ROOT / "config" / "selection.yaml").read_text())
    drifted = {**selection, "dedup": {**selection["dedup"], "embedding_max_distance": 0.002}}
    a = _effective(SelectionConfig, selection, "a")
    b = _effective(SelectionConfig, drifted, "b")
    assert [k for k in a if a[k] != b[k]] == ["dedup.embedding_max_distance"]
