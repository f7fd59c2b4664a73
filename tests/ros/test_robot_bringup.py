"""Bring-up with real rclpy: a camera-replay process, the robot nodes in another, results and uploads.

Also: the launch file and ``fleetloop robot`` take the same arguments, and the robot YAML is
read the same by our loader and by rcl (what ``ros2 launch`` hands the nodes).
"""

from __future__ import annotations

import ast
import json
import subprocess
import time
from pathlib import Path

import pytest

from fleetloop_core.errors import ConfigError
from fleetloop_core.cli import command_line

ROOT = Path(__file__).resolve().parents[2]
# frames are the robot's only trigger here: keep every candidate, budget far above the stream
KEEP_ALL = {
    "/**/selector": {
        "selection.policy.name": "threshold",
        "selection.policy.params": {"threshold": 0.0},
        "selection.budget.frames_per_hour": 360000.0,
        "selection.dedup.enabled": False,
    },
    "/**/perception": {"image_qos": "reliable"},
}


def _stamp(header) -> tuple[int, int, str]:
    return header.stamp.sec, header.stamp.nanosec, header.frame_id


def test_camera_replay_robot_results_and_store(ros, robot, spawn):
    from fleetloop_interfaces.msg import FrameDecision, FrameResult
    from sensor_msgs.msg import Image

    robot_process = robot(ros.namespace, KEEP_ALL)
    images = ros.collect(Image, "camera/image_raw")
    results = ros.collect(FrameResult, "frame_results")
    decisions = ros.collect(FrameDecision, "frame_decisions")
    ros.wait_for_publishers(["frame_results", "frame_decisions"])
    sent = 30
    # the camera starts once the robot's perception and this test subscribe (frames before discovery are lost)
    camera = spawn(
        command_line(
            "camera",
            "--namespace",
            ros.namespace,
            "--count",
            str(sent),
            "--rate",
            "15",
            "--reliable",
            "--wait-subscribers",
            "2",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ros.spin_until(lambda: camera.poll() is not None, 120, "the camera process to finish")
    assert camera.returncode == 0, camera.stdout.read()
    ros.spin_until(
        lambda: len(results) >= sent and len(decisions) >= sent,
        60,
        lambda: (
            f"{sent} results and decisions (have {len(results)}, {len(decisions)}; "
            f"{len(images)} images)\n{robot_process.output}"
        ),
    )

    assert len(images) == sent
    # every result answers one published image, header copied (stamp and frame_id)
    assert sorted(_stamp(r.header) for r in results) == sorted(_stamp(i.header) for i in images)
    first = results[0]
    assert first.stream == f"{ros.namespace}/camera/image_raw"
    assert first.tier_used in ("T4", "T3") and 0.0 <= first.confidence <= 1.0
    assert len(first.probs) == len(first.labels) == 11 and abs(sum(first.probs) - 1.0) < 1e-3
    assert {m.tier for m in first.models} >= {"T4"} and first.models[0].execution_provider == "CPUExecutionProvider"
    assert first.task == "classification" and len(first.score_names) == len(first.scores)
    scores = dict(zip(first.score_names, first.scores))
    assert set(scores) == {"entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty"}
    assert all(0.0 <= scores[s] <= 1.0 for s in scores)

    kept = [d for d in decisions if d.keep]
    assert len(kept) == sent  # threshold 0, no dedup, ample budget: every frame is kept
    store = robot_process.state / "store"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(store.rglob("*.json"))) < len(kept):
        time.sleep(0.2)
    sidecars = [json.loads(p.read_text()) for p in store.rglob("*.json")]
    assert len(sidecars) == len(kept)
    sent_stamps = {s * 1_000_000_000 + ns for s, ns, _ in map(_stamp, (i.header for i in images))}
    assert {s["stamp_ns"] for s in sidecars} == sent_stamps
    assert all(s["robot_id"] == "robot-1" and s["stream"] == first.stream for s in sidecars)
    assert len(list(store.rglob("*.png"))) == len(kept)


def _launch_arguments(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            names.append(node.args[0].value)
    return names


def test_launch_file_arguments_are_the_cli_options():
    from fleetloop_core.cli import build_parser
    from fleetloop_ros.cli import CLI_ONLY
    from fleetloop_ros.launch_args import ARGUMENT_NAMES, LAUNCH_ONLY

    launch = [name for name in _launch_arguments(ROOT / "launch" / "robot.launch.py") if name not in LAUNCH_ONLY]
    parser = build_parser()
    robot = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "robot")[1]
    cli = [action.dest for action in robot._actions if action.dest != "help"]
    assert sorted(launch) == sorted(ARGUMENT_NAMES)
    assert sorted(set(cli) - set(CLI_ONLY)) == sorted(launch)
    # both turn the YAML's dds section (and transport:= / type_propagation:=) into the processes' environment
    text = (ROOT / "launch" / "robot.launch.py").read_text()
    assert "dds_environment(dds)" in text and "additional_env" in text
    assert set(LAUNCH_ONLY) <= set(_launch_arguments(ROOT / "launch" / "robot.launch.py"))
    replay = (ROOT / "launch" / "replay.launch.py").read_text()
    assert "robot.launch.py" in replay and "ARGUMENTS" in replay


def test_launch_arguments_map_to_the_same_parameters():
    from fleetloop_ros.launch_args import node_overrides

    nodes = node_overrides(
        {
            "robot_id": "robot-7",
            "image_topics": "a/image, b/image",
            "store_uri": "s3://b/p",
            "use_gpu": "true",
            "models_dir": "",
            "control_plane": None,
        }
    )
    assert nodes["perception"] == {"robot_id": "robot-7", "image_topics": ["a/image", "b/image"], "use_gpu": True}
    assert nodes["selector"]["queue.store"] == nodes["uploader"]["queue.store"] == "s3://b/p"
    assert nodes["model_manager"] == {"robot_id": "robot-7", "control_plane.thing_name": "robot-7", "use_gpu": True}
    with pytest.raises(ConfigError, match="use_gpu: expected true or false"):
        node_overrides({"use_gpu": "maybe"})


def test_robot_yaml_reads_the_same_through_rcl(ros_domain, test_models):
    """What ros2 launch does (rcl reads the file) gives the nodes the settings our loader validated."""
    import rclpy
    from rclpy.parameter import Parameter

    from fleetloop_ros.perception import PerceptionNode
    from fleetloop_ros.settings import load_robot_config

    path = ROOT / "config" / "robot.yaml"
    expected = load_robot_config(path).settings["perception"]
    context = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
    try:
        node = PerceptionNode(
            namespace="/yaml_check",
            context=context,
            parameter_overrides=[Parameter("models_dir", value=str(test_models["T4"].parent))],
        )
        got = node.parameters.current
        assert got.model_copy(update={"models_dir": expected.models_dir}) == expected
        assert node.get_parameter("cascade.escalate_above").value == expected.cascade.escalate_above
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_robot_yaml_errors_name_file_node_and_key(tmp_path):
    from fleetloop_ros.settings import load_robot_config

    bad = tmp_path / "robot.yaml"
    bad.write_text("/**/perception:\n  ros__parameters:\n    cascade:\n      escalate_abve: 0.5\n")
    with pytest.raises(ConfigError, match=r"robot.yaml \[perception\]: unknown key cascade.escalate_abve"):
        load_robot_config(bad)
    bad.write_text("/**/selector:\n  ros__parameters:\n    selection:\n      budget:\n        frames_per_hour: -5\n")
    with pytest.raises(ConfigError, match=r"\[selector\]: selection.budget.frames_per_hour: .*greater than 0"):
        load_robot_config(bad)
    bad.write_text("/**/planner:\n  ros__parameters: {}\n")
    with pytest.raises(ConfigError, match=r"unknown node '/\*\*/planner'"):
        load_robot_config(bad)
    bad.write_text("/**:\n  ros__parameters:\n    robt_id: x\n")
    with pytest.raises(ConfigError, match=r"/\*\*: unknown key robt_id"):
        load_robot_config(bad)
    # an integer where a float is due is fine here (rcl would refuse it: the loader widens it)
    bad.write_text("/**/perception:\n  ros__parameters:\n    cascade: {escalate_above: 1}\n")
    assert load_robot_config(bad).settings["perception"].cascade.escalate_above == 1.0
