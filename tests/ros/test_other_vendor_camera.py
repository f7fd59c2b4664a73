"""Cameras built with another DDS vendor (Eclipse Cyclone DDS, no ROS code) into the perception node.

The camera is tests/fixtures/cyclone_camera.py: ``sensor_msgs/Image`` on ``rt/<topic>``, XCDR1,
declared with Cyclone's own IDL types. With the robot's defaults (shared memory + UDP, XTypes type
information announced) Cyclone refuses the match and nothing arrives: the diagnostics must say so.
With the one switch ``dds: {type_propagation: false}`` frames arrive and are answered. And a
Cyclone camera that goes away while the node's reader history is full must not freeze the node
(Fast DDS 3.2.3 then held an undeliverable sample; a typed take retried it forever with the GIL
held: docs/ros_robustness.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fleetloop_core.dds import DdsConfig

ROOT = Path(__file__).resolve().parents[2]
CAMERA = ROOT / "tests" / "fixtures" / "cyclone_camera.py"
OTHER_VENDOR = {"/**": {"dds.type_propagation": False}, "/**/perception": {"image_qos": "reliable"}}
OTHER_VENDOR_DDS = DdsConfig(type_propagation=False)


def _start_camera(spawn, tmp_path: Path, namespace: str, *args: str, whc_high: str = "") -> subprocess.Popen:
    sys.path.insert(0, str(CAMERA.parent))
    try:
        from cyclone_camera import cyclone_environment
    finally:
        sys.path.pop(0)
    import os

    env = dict(os.environ, **cyclone_environment(tmp_path, whc_high))
    return spawn(
        [sys.executable, str(CAMERA), "--topic", f"{namespace}/camera/image_raw", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(ros, camera: subprocess.Popen, timeout: float = 90.0) -> dict:
    ros.spin_until(lambda: camera.poll() is not None, timeout, "the Cyclone camera to finish")
    out, err = camera.communicate()
    lines = [json.loads(line)["cyclone_camera"] for line in out.splitlines() if line.startswith("{")]
    assert lines, f"the Cyclone camera printed nothing (exit {camera.returncode}): {err[-2000:]}"
    return lines[-1]


def _settle(ros, received: list, quiet_s: float = 2.0, timeout: float = 30.0) -> None:
    """Spin until ``received`` stops growing for ``quiet_s``."""
    end = time.monotonic() + timeout
    count, since = len(received), time.monotonic()
    while time.monotonic() < end and time.monotonic() - since < quiet_s:
        ros.spin_for(0.1)
        if len(received) != count:
            count, since = len(received), time.monotonic()


def _results_qos():
    from fleetloop_ros.perception import RESULTS_QOS

    return RESULTS_QOS


def _status(diagnostics: list, name: str):
    from fleetloop_ros.messages import level_of, values_of

    for message in reversed(diagnostics):
        for status in message.status:
            if status.name.endswith(f": {name}"):
                return level_of(status), status.message, values_of(status)
    return None


def test_a_cyclone_camera_is_answered_with_type_propagation_off(ros_with, robot, tmp_path, spawn):
    from diagnostic_msgs.msg import DiagnosticArray
    from fleetloop_interfaces.msg import FrameResult

    ros = ros_with(OTHER_VENDOR_DDS)
    robot_process = robot(ros.namespace, OTHER_VENDOR, args=["--nodes", "perception"])
    results = ros.collect(FrameResult, "frame_results", _results_qos())
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    ros.wait_for_publishers(["frame_results"])
    # a light stream: what is lost at 640x480 @ 30 Hz is measured by benchmarks/ros_stress.py (docs table)
    sent = 60
    camera = _start_camera(
        spawn,
        tmp_path,
        ros.namespace,
        "--count",
        str(sent),
        "--rate",
        "15",
        "--width",
        "320",
        "--height",
        "240",
        "--reliable",
    )
    report = _finish(ros, camera)
    _settle(ros, results)
    answered = [r for r in results if r.header.frame_id == "cyclone"]
    print(
        f"\nCyclone DDS camera -> perception (shm+udp, type propagation off, reliable 320x240 @ 15 Hz): "
        f"sent {report['sent']}, answered {len(answered)}"
    )
    assert report["matched"] == 1 and report["sent"] == sent
    assert len(answered) >= sent // 2, robot_process.output[-3000:]
    stamps = {r.header.stamp.sec * 1_000_000_000 + r.header.stamp.nanosec for r in answered}
    assert len(stamps) == len(answered)  # each answer is a distinct camera frame
    from fleetloop_ros.messages import level_of

    inputs = [s for m in diagnostics for s in m.status if s.name.endswith(": input")]
    assert any(level_of(s) == 0 and s.message == "receiving" for s in inputs), [s.message for s in inputs][-5:]
    assert min(stamps) >= report["first_stamp_ns"] and max(stamps) <= report["last_stamp_ns"]
    assert robot_process.stop() == 0 and robot_process.stop_seconds < 5.0


def test_with_type_propagation_a_cyclone_camera_is_refused_and_diagnostics_say_why(ros, robot, tmp_path, spawn):
    """With the defaults Cyclone refuses Fast DDS's type information. Nothing arrives; /diagnostics says why.

    Measured: Fast DDS counts the Cyclone writer as matched, Cyclone does not (it logs "invalid type
    object"), so the reader waits for frames that never come. (With the large_data transport the
    camera is not even discovered: the input check's "no publisher" says so.)
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from fleetloop_interfaces.msg import FrameResult

    from fleetloop_core.health import WARN

    robot_process = robot(ros.namespace, {"/**/perception": {"image_qos": "reliable"}}, args=["--nodes", "perception"])
    results = ros.collect(FrameResult, "frame_results", _results_qos())
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    ros.wait_for_publishers(["frame_results"])
    before = _status(diagnostics, "input") or ros.spin_until(lambda: _status(diagnostics, "input"), 10, "diagnostics")
    assert before[0] == WARN and before[1] == f"{ros.namespace}/camera/image_raw: no publisher"
    camera = _start_camera(spawn, tmp_path, ros.namespace, "--count", "30", "--reliable", "--wait-timeout", "8")

    def refused():
        status = _status(diagnostics, "input")
        return status if status and "no frames" in status[1] else None

    level, message, values = ros.spin_until(
        refused, 30, lambda: f"an input WARN naming the refused match (last: {_status(diagnostics, 'input')})"
    )
    assert level == WARN and "dds.type_propagation: false" in message
    report = _finish(ros, camera)
    assert report["matched"] == 0 and camera.returncode == 2 and not results
    assert "publisher without ROS" in message and values[f"{ros.namespace}/camera/image_raw.matched_publishers"] == "1"
    assert robot_process.stop() == 0 and robot_process.stop_seconds < 5.0


def test_a_cyclone_camera_leaving_a_full_reader_does_not_freeze_the_node(ros_with, robot, tmp_path, spawn):
    """A large-data Cyclone camera floods the reader (1920x1080 at 60 Hz, a large writer cache) and leaves.

    Against the typed take this froze the node every time (2 of 2 runs: 99 % CPU, no exit on SIGINT,
    a second camera never matched). A second camera must be answered and the node must stop on SIGINT.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from fleetloop_interfaces.msg import FrameResult

    ros = ros_with(OTHER_VENDOR_DDS)
    robot_process = robot(ros.namespace, OTHER_VENDOR, args=["--nodes", "perception"])
    results = ros.collect(FrameResult, "frame_results", _results_qos())
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    ros.wait_for_publishers(["frame_results"])
    flood = _start_camera(
        spawn,
        tmp_path,
        ros.namespace,
        "--count",
        "150",
        "--rate",
        "60",
        "--width",
        "1920",
        "--height",
        "1080",
        "--reliable",
        "--linger",
        "0.05",
        whc_high="64MB",
    )
    assert _finish(ros, flood)["sent"] == 150
    ros.spin_for(2.0)
    first = len(results)
    second = _start_camera(
        spawn,
        tmp_path,
        ros.namespace,
        "--count",
        "60",
        "--rate",
        "15",
        "--width",
        "320",
        "--height",
        "240",
        "--reliable",
    )
    report = _finish(ros, second)
    _settle(ros, results)
    answered_second = [r for r in results[first:] if r.header.frame_id == "cyclone"]
    frames = _status(diagnostics, "frames")
    resets = frames[2].get("subscription_resets_total") if frames else "?"
    print(
        f"\nafter a 1920x1080 @ 60 Hz Cyclone camera left: second camera sent {report['sent']}, answered "
        f"{len(answered_second)}; subscription resets {resets}"
    )
    assert report["matched"] == 1, robot_process.output[-3000:]
    assert len(answered_second) >= report["sent"] // 3, robot_process.output[-3000:]
    cpu = psutil.Process(robot_process.process.pid).cpu_percent(interval=1.0)
    assert cpu < 50.0, f"the idle node spins at {cpu:.0f} % CPU"
    assert robot_process.stop() == 0 and robot_process.stop_seconds < 5.0
