"""Malformed images are counted, logged with the reason and reported on /diagnostics; perception goes on
(and answers the semi-planar YUV frames of Jetson and GStreamer cameras as it answers rgb8)."""

from __future__ import annotations

MALFORMED = {
    "/**/perception": {"image_qos": "reliable", "compressed_topics": ["camera/image_raw/compressed"]},
    "/**": {"health.period_s": 0.5},
}


def _header(seconds: int):
    from std_msgs.msg import Header

    header = Header(frame_id="camera")
    header.stamp.sec = seconds
    return header


def test_malformed_images_are_counted_reported_and_survived(ros, robot):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from fleetloop_interfaces.msg import FrameResult
    from sensor_msgs.msg import CompressedImage, Image

    from fleetloop_core.ros_convert import array_to_image, rgb8_to_semi_planar
    from fleetloop_ros.camera_frames import sim_frames
    from fleetloop_ros.messages import level_of, values_of

    process = robot(ros.namespace, MALFORMED, args=["--nodes", "perception"])
    results = ros.collect(FrameResult, "frame_results")
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    camera = ros.publisher(Image, "camera/image_raw")
    compressed = ros.publisher(CompressedImage, "camera/image_raw/compressed")
    ros.wait_for_publishers(["frame_results"])
    ros.wait_for_subscribers(camera)
    ros.wait_for_subscribers(compressed)

    frame = sim_frames(1, 96, 128)[0]
    good = array_to_image(frame, "rgb8")
    row = good.width * 3
    bad = {
        "wrong step": Image(height=good.height, width=good.width, encoding="rgb8", step=row - 1, data=good.data),
        "unknown encoding": Image(height=good.height, width=good.width, encoding="weird16", step=row, data=good.data),
        "empty data": Image(height=good.height, width=good.width, encoding="rgb8", step=row, data=b""),
        "size mismatch": Image(
            height=good.height, width=good.width, encoding="rgb8", step=row, data=good.data[: row * (good.height // 2)]
        ),
    }

    def valid(second: int, encoding: str = "rgb8") -> Image:
        fields = good if encoding == "rgb8" else array_to_image(rgb8_to_semi_planar(frame, encoding), encoding, 4)
        return Image(
            header=_header(second),
            height=fields.height,
            width=fields.width,
            encoding=encoding,
            step=fields.step,
            data=fields.data,
        )

    second = 1
    for message in bad.values():
        camera.publish(valid(second))
        message.header = _header(second + 1)
        camera.publish(message)
        second += 2
        ros.spin_for(0.1)
    compressed.publish(CompressedImage(header=_header(second), format="jpeg", data=b"\xff\xd8 not a jpeg"))
    for encoding in ("rgb8", "nv12", "nv21", "nv24"):  # a Jetson / GStreamer camera's YUV answers too
        second += 1
        camera.publish(valid(second, encoding))  # the node keeps answering after the bad ones
        ros.spin_for(0.1)

    def frames_status() -> DiagnosticStatus | None:
        for array in reversed(diagnostics):
            for status in array.status:
                values = values_of(status)
                if status.name == "perception: frames" and (
                    values.get("malformed_total"),
                    values.get("answered_total"),
                ) == ("5", "8"):
                    return status
        return None

    status = ros.spin_until(
        frames_status,
        30,
        lambda: (
            f"a diagnostics report of 5 malformed and 8 answered images "
            f"({len(diagnostics)} arrays, {len(results)} results)"
        ),
    )
    ros.spin_until(lambda: len(results) >= 8, 30, "results of the 8 valid frames")
    values = values_of(status)
    assert level_of(status) == 2 and "dropped_fraction" in status.message  # 5 of 13 dropped: ERROR
    assert values["unsupported_encoding_total"] == "1" and values["received_total"] == "13"
    assert status.hardware_id == "robot-1"
    assert sorted(r.header.stamp.sec for r in results) == [1, 3, 5, 7, 10, 11, 12, 13]

    process.wait_for("cannot be decoded", timeout=10)
    log = [line for line in process.lines if "dropped malformed image" in line]
    assert len(log) == 5
    for needle in (
        "step 383 is smaller than a row (384 bytes)",
        "unsupported image encoding 'weird16'",
        "data has 0 bytes",
        f"data has {row * (good.height // 2)} bytes",
        "cannot be decoded",
    ):
        assert any(needle in line for line in log), (needle, log)
    assert process.process.poll() is None
    inference = next(s for a in reversed(diagnostics) for s in a.status if s.name == "perception: inference")
    assert float(values_of(inference)["latency_p99_ms"]) > 0
    assert values_of(inference)["T4_execution_provider"] == "CPUExecutionProvider"
