"""The nodes in their other arrangements: selector pairing from topics, uploader health, a bag as camera."""

from __future__ import annotations

import json
import socket
import time

from test_robot_bringup import KEEP_ALL


def test_selector_not_composed_pairs_images_and_results_from_topics(ros, robot):
    from fleetloop_interfaces.msg import FrameDecision
    from sensor_msgs.msg import Image

    from fleetloop_ros.camera_frames import sim_frames

    process = robot(ros.namespace, KEEP_ALL, args=["--composed", "false"])
    assert "topics between nodes" in process.output
    decisions = ros.collect(FrameDecision, "frame_decisions")
    camera = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_publishers(["frame_decisions"])
    ros.wait_for_subscribers(camera, count=2)  # perception and the selector
    stamps = ros.stream(camera, sim_frames(20, 128, 128), 10.0, 20)  # distinct frames: keys are content hashes
    ros.spin_until(lambda: len(decisions) >= 20, 30, lambda: f"20 decisions (have {len(decisions)})")
    assert sorted(d.header.stamp.sec * 1_000_000_000 + d.header.stamp.nanosec for d in decisions) == stamps
    assert all(d.keep and d.policy == "threshold" for d in decisions)
    store = process.state / "store"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(store.rglob("*.json"))) < 20:
        time.sleep(0.2)
    sidecars = [json.loads(p.read_text()) for p in store.rglob("*.json")]
    assert sorted(s["stamp_ns"] for s in sidecars) == stamps
    # the result travelled as a message: scores, versions and both tiers' outputs survive the trip
    assert all(
        set(s["scores"]) == {"entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty"}
        and "T4" in s["model_versions"]
        and "T4" in s["tier_outputs"]
        for s in sidecars
    )
    # a camera that does not stamp: its frames cannot be told apart by stamp, so none is paired (a result
    # would go to whichever unstamped image came last) and the node says why
    from fleetloop_core.ros_convert import array_to_image

    for frame in sim_frames(5, 128, 128, seed=3):
        fields = array_to_image(frame, "rgb8")
        camera.publish(Image(height=128, width=128, encoding="rgb8", step=fields.step, data=fields.data))
    process.wait_for("carry no header stamp", timeout=20)
    ros.spin_for(1.0)
    assert len(decisions) == 20 and len(list(store.rglob("*.json"))) == 20


def test_uploader_reports_an_unreachable_store(ros_domain, tmp_path, monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from fleetloop_core.health import ERROR
    from fleetloop_ros.uploader import UploaderNode

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials are fine, the endpoint is down
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = UploaderNode(
            namespace="/uploader_check",
            context=context,
            parameter_overrides=[
                Parameter("queue.directory", value=str(tmp_path / "queue")),
                Parameter("queue.store", value=f"s3://frames/robot?endpoint_url=http://127.0.0.1:{port}"),
                Parameter("health.store_unreachable_s.warn", value=0.0),
                Parameter("health.store_unreachable_s.error", value=0.0),
            ],
        )
        try:
            (check,) = node.checks()
            assert check.values["store_reachable"] == "unknown"  # probed once spinning, not at start
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            for _ in range(5):  # the first probe, 0.1 s after start
                executor.spin_once(timeout_sec=0.5)
            (check,) = node.checks()
            assert check.level == ERROR and check.values["store_reachable"] == "False"
            assert "store_unreachable_s" in check.message and "127.0.0.1" in check.values["store_error"]
            # live: the bandwidth cap changes, the store does not (it needs a restart)
            assert node.set_parameters([Parameter("queue.bandwidth_bytes_per_s", value=1000.0)])[0].successful
            assert node.uploader.config.bandwidth_bytes_per_s == 1000.0
            assert not node.set_parameters([Parameter("queue.store", value="file:///tmp/x")])[0].successful
        finally:
            node.close()
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_a_recorded_bag_is_a_camera(tmp_path):
    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from fleetloop_core.ros_convert import array_to_image, msg_to_rgb8
    from fleetloop_ros.camera_frames import FrameSource, bag_messages
    from fleetloop_ros.messages import stamp_ns

    store = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header, Time = (
        store.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time")
    )
    frames = [np.full((8, 6, 3), value, np.uint8) for value in (10, 20, 30)]
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection("/camera/image_raw", Image.__msgtype__, typestore=store)
        for index, frame in enumerate(frames):
            fields = array_to_image(frame, "rgb8")
            msg = Image(
                header=Header(stamp=Time(sec=index, nanosec=0), frame_id="cam"),
                height=fields.height,
                width=fields.width,
                encoding="rgb8",
                is_bigendian=0,
                step=fields.step,
                data=np.frombuffer(fields.data, np.uint8),
            )
            writer.write(images, index * 1_000_000_000, store.serialize_cdr(msg, Image.__msgtype__))
    replayed = list(bag_messages(tmp_path / "bag"))
    assert [kind for kind, _ in replayed] == ["image"] * 3
    assert [int(msg_to_rgb8(m)[0, 0, 0]) for _, m in replayed] == [10, 20, 30]
    # the camera sends them in order, then again from the first, stamped when sent (not as recorded)
    camera = FrameSource(str(tmp_path / "bag"))
    sent = [camera.next_message(5_000_000_000 + index, "camera") for index in range(4)]
    assert camera.kind == "image" and [int(msg_to_rgb8(m)[0, 0, 0]) for m in sent] == [10, 20, 30, 10]
    assert [stamp_ns(m.header.stamp) for m in sent] == [5_000_000_000 + index for index in range(4)]
    assert {m.header.frame_id for m in sent} == {"camera"}
