"""Hot-swap through the ROS services while frames stream: no frame unanswered, latched status follows."""

from __future__ import annotations

import json
import threading

from fixtures.model_packages import make_version

SENT = 150
SWAP = {
    "/**/perception": {"image_qos": "reliable"},
    "/**/model_manager": {
        "manager.watchdog.window_frames": 20,
        "manager.watchdog.min_frames": 10,
        "manager.watchdog.window_s": 20.0,
        "control_plane.poll_s": 0.5,
    },
}


def _ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def test_swap_and_rollback_through_services_while_streaming(ros, robot, test_models, signing_keys, tmp_path):
    from fleetloop_interfaces.msg import FrameResult, ModelStatus
    from fleetloop_interfaces.srv import SwapModel
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    from fleetloop_core.contracts.manifest import load_manifest
    from fleetloop_ros.camera_frames import sim_frames

    reference = load_manifest(test_models["T4"] / "manifest.json").version
    key = signing_keys["keys"]["fleet"][0]
    # robots roll back to installed packages: serve a signed 1.5.0 first, then swap to 2.0.0 mid-stream
    first = make_version(test_models["T4"], tmp_path / "t4-1.5.0", "1.5.0", key)
    package = make_version(test_models["T4"], tmp_path / "t4-2.0.0", "2.0.0", key)
    original = "1.5.0"
    process = robot(ros.namespace, SWAP)
    results = ros.collect(FrameResult, "frame_results")
    camera = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_publishers(["frame_results"])
    ros.wait_for_subscribers(camera)

    # a camera thread streams at 15 Hz while this thread asks for the swap and waits for its outcome
    frames = sim_frames(20, 128, 128)
    stamps: list[int] = []
    streaming = threading.Thread(target=lambda: stamps.extend(_stream(camera, frames, 15.0, SENT)))
    streaming.start()
    ros.spin_until(lambda: len(results) >= 10, 30, "the first results")
    response = ros.call(
        SwapModel, "model_manager/swap_model", SwapModel.Request(tier="T4", package=str(first)), timeout=90
    )
    assert response.success and response.previous_version == reference, response.message
    ros.spin_until(lambda: len(results) >= 15, 30, "more results")
    started_at = len(results)
    response = ros.call(
        SwapModel,
        "model_manager/swap_model",
        SwapModel.Request(tier="T4", package=str(package), version="2.0.0"),
        timeout=90,
    )
    swapped_at = len(results)
    ros.spin_until(lambda: not streaming.is_alive(), 60, "the camera thread")
    ros.spin_until(lambda: len(results) >= len(stamps) == SENT, 60, lambda: f"{SENT} results (have {len(results)})")

    assert response.success, response.message
    assert (response.previous_version, response.serving_version) == (original, "2.0.0")
    # every frame sent during the swap got its answer, each from exactly one model version
    assert sorted(_ns(r.header) for r in results) == sorted(stamps)
    versions = [
        next(m.version for m in r.models if m.tier == "T4") for r in sorted(results, key=lambda r: _ns(r.header))
    ]
    first_switch, switch = versions.index(original), versions.index("2.0.0")
    assert set(versions[:first_switch]) == {reference} and set(versions[first_switch:switch]) == {original}
    assert set(versions[switch:]) == {"2.0.0"} and started_at <= switch <= swapped_at

    # the status is latched: a subscriber that joins now still gets it
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    statuses = ros.collect(ModelStatus, "model_status", latched)
    ros.spin_until(lambda: statuses, 30, "the latched model status")
    serving = {v.tier: v.version for v in statuses[-1].serving}
    assert serving["T4"] == "2.0.0" and statuses[-1].last_event_ok
    assert statuses[-1].serving[0].execution_provider == "CPUExecutionProvider"

    rollback = ros.call(Trigger, "model_manager/rollback", Trigger.Request(), timeout=60)
    assert rollback.success, rollback.message
    ros.spin_until(
        lambda: {v.tier: v.version for v in statuses[-1].serving}["T4"] == original, 30, "the status after the rollback"
    )
    assert "rolled_back" in statuses[-1].last_event

    # a package the robot must not take is refused with the reason, and the model keeps serving
    unsigned = make_version(test_models["T4"], tmp_path / "t4-3.0.0", "3.0.0", None)
    refused = ros.call(SwapModel, "model_manager/swap_model", SwapModel.Request(tier="T4", package=str(unsigned)))
    assert not refused.success and "sign" in refused.message.lower()
    assert refused.serving_version == original
    wrong = ros.call(SwapModel, "model_manager/swap_model", SwapModel.Request(tier="T9", package=str(package)))
    assert not wrong.success and "T9" in wrong.message

    # the same node takes deploy jobs from its control plane (here the local job directory)
    newer = make_version(test_models["T4"], tmp_path / "t4-2.1.0", "2.1.0", key)
    name = load_manifest(newer / "manifest.json").name
    jobs = process.state / "jobs" / "robot-1"
    (jobs / "queued" / "job-7.json").write_text(
        json.dumps(
            {
                "jobId": "job-7",
                "queuedAt": 1,
                "jobDocument": {
                    "operation": "fleetloop.deploy_model",
                    "model": {"name": name, "version": "2.1.0", "tier": "T4"},
                    "package": {"path": str(newer)},
                },
            }
        )
    )
    streaming = threading.Thread(target=lambda: _stream(camera, frames, 15.0, 45))
    streaming.start()
    ros.spin_until(
        lambda: {v.tier: v.version for v in statuses[-1].serving}["T4"] == "2.1.0",
        60,
        lambda: f"the status after job-7\n{process.output}",
    )
    ros.spin_until(lambda: not streaming.is_alive(), 60, "the camera thread")
    job_status = jobs / "status" / "job-7.json"
    ros.spin_until(lambda: json.loads(job_status.read_text())["status"] == "SUCCEEDED", 30, "job-7 SUCCEEDED")


def _stream(publisher, frames, rate_hz: float, count: int) -> list[int]:
    """Publish from a thread (this thread does not spin; the test's executor does)."""
    import time

    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from fleetloop_core.ros_convert import array_to_image

    payloads = [array_to_image(frame, "rgb8") for frame in frames]
    stamps, start = [], time.monotonic()
    for index in range(count):
        fields = payloads[index % len(payloads)]
        now = time.time_ns()
        header = Header(frame_id="camera")
        header.stamp.sec, header.stamp.nanosec = now // 1_000_000_000, now % 1_000_000_000
        publisher.publish(
            Image(
                header=header,
                height=fields.height,
                width=fields.width,
                encoding="rgb8",
                is_bigendian=0,
                step=fields.step,
                data=fields.data,
            )
        )
        stamps.append(now)
        time.sleep(max(0.0, start + (index + 1) / rate_hz - time.monotonic()))
    return stamps
